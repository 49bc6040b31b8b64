"""The progressive login delay, kept in the database (``login_throttle``).

Why a delay and not a lock: a lock per account lets anyone lock a colleague out with five
requests, and a lock that answers "locked" tells an attacker which names exist. Instead each
(typed name, client address) pair gets ``FREE_ATTEMPTS`` attempts, then one attempt after 2 s,
4 s, 8 s ... up to ``MAX_DELAY`` (15 minutes): about a hundred guesses a day from one address,
while the colleague at their own desk never waits. A botnet spreading guesses over many
addresses meets a second counter per name (``address`` "*", ``NAME_FREE_ATTEMPTS``), which
does not apply to addresses the user has logged in from before: the right password from a
known address still passes. Both counters forget a quiet day.

Why it holds under parallel guesses: an attempt is counted *before* its password is checked
(the rows are read ``FOR UPDATE`` on PostgreSQL; SQLite's writers are serialised by BEGIN
IMMEDIATE) and the check runs after that short transaction has committed, outside any write
transaction; a success then clears the count. So fifty parallel guesses get ``FREE_ATTEMPTS``
checks and forty-five refusals, on either database, and argon2 never runs while the SQLite
write lock is held.

Unknown names get rows like real ones (keyed by what was typed), so the delay answers the
same for both; rows of names never logged in are pruned after ``FORGET``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triage.storage.models import LoginThrottle

FREE_ATTEMPTS = 5  # per name and address before the first delay
NAME_FREE_ATTEMPTS = 20  # per name from addresses it never logged in from, all together
FIRST_DELAY = timedelta(seconds=2)
MAX_DELAY = timedelta(minutes=15)
FORGET = timedelta(days=1)  # a counter quiet this long starts again from zero
ANY = "*"  # the address of the per-name counter
NAME_MAX = 64


@dataclass(frozen=True)
class Delay:
    """The progressive delay's settings (``TRIAGE_LOGIN_*``); the defaults are the above."""

    free_attempts: int = FREE_ATTEMPTS
    name_free_attempts: int = NAME_FREE_ATTEMPTS
    first_delay: timedelta = FIRST_DELAY
    max_delay: timedelta = MAX_DELAY

    def after(self, failures_over: int) -> timedelta:
        """The wait after the ``failures_over``-th attempt past the free ones (0 = the last
        free one)."""
        # 2**30 times any allowed first delay is past any allowed cap, and within timedelta.
        return min(self.max_delay, self.first_delay * (2 ** min(failures_over, 30)))


DEFAULT_DELAY = Delay()


@dataclass(frozen=True)
class Attempt:
    """Whether a password may be checked now; if not, how long to wait."""

    allowed: bool
    retry_after: timedelta = timedelta(0)
    delay_started: bool = False  # this attempt used the last free one: a delay begins


def normal_name(name: str) -> str:
    return name.strip().lower()[:NAME_MAX]


def delay_after(failures_over: int) -> timedelta:
    """The wait after the ``failures_over``-th attempt past the free ones (0 = the last free)."""
    return DEFAULT_DELAY.after(failures_over)


def reserve(s: Session, name: str, address: str, now: datetime,
            delay: Delay = DEFAULT_DELAY) -> Attempt:
    """Count an attempt for ``name`` from ``address`` before its password is checked.

    Call in a short write transaction of its own and commit before checking the password."""
    name, address = normal_name(name), (address or "unknown")[:64]
    _ensure(s, name, (address, ANY), now)
    rows = {r.address: r for r in s.scalars(
        select(LoginThrottle)
        .where(LoginThrottle.name == name, LoginThrottle.address.in_((address, ANY)))
        .order_by(LoginThrottle.address).with_for_update())}
    pair, per_name = rows[address], rows[ANY]
    counted = [(pair, delay.free_attempts)]
    if not pair.known:
        counted.append((per_name, delay.name_free_attempts))
    for row, _ in counted:
        if row.last_at < now - FORGET:
            row.failures, row.not_before = 0, now
    wait = max(row.not_before - now for row, _ in counted)
    if wait > timedelta(0):
        return Attempt(False, wait)
    started = False
    for row, free in counted:
        row.failures += 1
        row.last_at = now
        if row.failures >= free:
            row.not_before = now + delay.after(row.failures - free)
            started = started or row.failures == free
    s.flush()
    s.execute(delete(LoginThrottle).where(
        and_(LoginThrottle.known.is_(False), LoginThrottle.last_at < now - FORGET))
        .execution_options(synchronize_session=False))
    return Attempt(True, delay_started=started)


def succeeded(s: Session, name: str, address: str, now: datetime) -> None:
    """The right password from ``address``: its counter clears and the address is known."""
    name, address = normal_name(name), (address or "unknown")[:64]
    _ensure(s, name, (address,), now)
    row = s.get(LoginThrottle, (name, address), with_for_update=True)
    assert row is not None
    row.failures, row.not_before, row.known, row.last_at = 0, now, True, now


def failures(s: Session) -> dict[str, int]:
    """Attempts since the last success, by name, summed over the addresses tried from (for
    ``triage user list``; names nobody logged in as are there too)."""
    return {name: int(n) for name, n in s.execute(
        select(LoginThrottle.name, func.sum(LoginThrottle.failures))
        .where(LoginThrottle.address != ANY, LoginThrottle.failures > 0)
        .group_by(LoginThrottle.name))}


def _ensure(s: Session, name: str, addresses: tuple[str, ...], now: datetime) -> None:
    """The rows exist (inserted if missing; a concurrent insert of the same row is fine)."""
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    values = [{"name": name, "address": a, "failures": 0, "not_before": now, "known": False,
               "last_at": now} for a in addresses]
    s.execute(insert(LoginThrottle).values(values).on_conflict_do_nothing())


__all__ = ["ANY", "DEFAULT_DELAY", "FIRST_DELAY", "FORGET", "FREE_ATTEMPTS", "MAX_DELAY",
           "NAME_FREE_ATTEMPTS", "Attempt", "Delay", "delay_after", "failures", "normal_name",
           "reserve", "succeeded"]
