"""The live queue and presence: what changed since a page was made, and who else has a work
order open.

**Polling, not server-sent events.** The queue's script asks "what changed since cursor X?"
every few seconds, and reloads the rows only when the answer names a work order it has not
seen at that version. Server-sent events would need a change feed: the changes are made by
the staff pages, the API, the mail store and the SLA watch, in every daemon that shares one
PostgreSQL, so one daemon's event loop cannot see them without LISTEN/NOTIFY on PostgreSQL
and something else on SQLite, and each open queue would hold a connection and a task in the
loop that also polls the mailbox. A poll holds nothing between requests, answers the same
on SQLite and PostgreSQL, and sees every process's changes because it reads the table they
all write. The price is latency (the poll interval) and one request per open queue per
interval.

**What a poll costs:** the session lookup every staff request makes, and one statement:
``SELECT updated_at, number, version FROM work_orders WHERE updated_at > :t ORDER BY
updated_at DESC LIMIT 200``, a range scan of ``ix_work_orders_changed`` (migration 0018)
that needs no table rows (PostgreSQL: an index-only scan once the table is vacuumed). It
reads only the rows changed in the last ``OVERLAP``, at most ``LIMIT``. The queue itself is
rendered again only when something changed.

**The cursor** is the newest ``updated_at`` the caller has seen; every poll looks
``OVERLAP`` further back, because ``updated_at`` is set when a transaction starts and a
long one commits later (and daemons' clocks differ a little): a change is never missed if it
commits within ``OVERLAP`` of its time. The caller tells new from seen by (number, version).

**Presence** is a table (one row per work order and staff user), so daemons sharing
PostgreSQL see each other's staff: the work-order page's script sends a heartbeat every
``HEARTBEAT`` (viewing, or replying while a reply is being typed) and a row older than
``PRESENCE_TTL`` no longer counts. Rows are pruned by the heartbeats themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from triage.desk.actions import NotFound
from triage.storage.models import Presence, User, WorkOrder

OVERLAP = timedelta(minutes=2)
LIMIT = 200
HEARTBEAT = timedelta(seconds=20)  # the script's interval (templates/web/js/live.js)
PRESENCE_TTL = timedelta(seconds=60)
PRUNE_AFTER = timedelta(hours=1)
STATES = ("viewing", "replying")


@dataclass(frozen=True)
class Changed:
    number: str
    version: int
    updated_at: datetime


@dataclass(frozen=True)
class Changes:
    """Work orders changed since a cursor, newest first. ``more``: there were more than
    ``LIMIT`` (the caller should reload what it shows rather than look at each)."""

    cursor: datetime | None
    work_orders: list[Changed]
    more: bool


def changes_since(s: Session, since: datetime | None, *, limit: int = LIMIT) -> Changes:
    """What changed after ``since`` (less ``OVERLAP``); no ``since``: only the cursor to
    start from."""
    if since is None:
        return Changes(s.scalar(select(func.max(WorkOrder.updated_at))), [], False)
    rows = [Changed(str(n), int(v or 1), t) for t, n, v in s.execute(
        select(WorkOrder.updated_at, WorkOrder.number, WorkOrder.version)
        .where(WorkOrder.updated_at > since - OVERLAP)
        .order_by(WorkOrder.updated_at.desc()).limit(limit + 1))]
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = max(since, rows[0].updated_at) if rows else since
    return Changes(cursor, rows, more)


@dataclass(frozen=True)
class Present:
    """Another staff member with the work order open."""

    name: str
    display_name: str
    state: str
    seen_at: datetime


@dataclass(frozen=True)
class Seen:
    """What a heartbeat answers: who else is there, and the work order's version now (a page
    showing an older one is out of date)."""

    others: list[Present]
    version: int


def _work_order(s: Session, number: str) -> tuple[int, int]:
    row = s.execute(select(WorkOrder.id, WorkOrder.version)
                    .where(WorkOrder.number == number)).first()
    if row is None:
        raise NotFound(number)
    return int(row[0]), int(row[1] or 1)


def present(s: Session, number: str, now: datetime, *, besides: int | None = None) -> Seen:
    """Who has ``number`` open now (heartbeat within ``PRESENCE_TTL``), but ``besides``."""
    wo_id, version = _work_order(s, number)
    q = (select(User.name, User.display_name, Presence.state, Presence.seen_at)
         .join(User, User.id == Presence.user_id)
         .where(Presence.work_order_id == wo_id, Presence.seen_at > now - PRESENCE_TTL)
         .order_by(User.name))
    if besides is not None:
        q = q.where(Presence.user_id != besides)
    return Seen([Present(n, d or n, st, t) for n, d, st, t in s.execute(q)], version)


def heartbeat(s: Session, number: str, user_id: int, state: str, now: datetime) -> Seen:
    """Record that ``user_id`` has ``number`` open (``state``: viewing or replying), or has
    left it (``left``); answer who else is there. Prunes rows nobody refreshed for an hour."""
    if state not in (*STATES, "left"):
        raise ValueError(f"unknown presence state {state!r}")
    wo_id, _ = _work_order(s, number)
    if state == "left":
        s.execute(delete(Presence).where(Presence.work_order_id == wo_id,
                                         Presence.user_id == user_id))
    else:
        _upsert(s, wo_id, user_id, state, now)
    s.execute(delete(Presence).where(Presence.seen_at < now - PRUNE_AFTER))
    return present(s, number, now, besides=user_id)


def _upsert(s: Session, wo_id: int, user_id: int, state: str, now: datetime) -> None:
    dialect = s.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Presence).values(work_order_id=wo_id, user_id=user_id, state=state,
                                   seen_at=now)
    s.execute(stmt.on_conflict_do_update(
        index_elements=[Presence.work_order_id, Presence.user_id],
        set_={"state": state, "seen_at": now}))


__all__ = ["HEARTBEAT", "LIMIT", "OVERLAP", "PRESENCE_TTL", "STATES", "Changed", "Changes",
           "Present", "Seen", "changes_since", "heartbeat", "present"]
