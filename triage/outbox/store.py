"""Claim and record: the outbox table's side of sending.

Rows are claimed with a lease (``status='sending'``, ``claimed_until``) in their own short
transaction, so several processes can sweep one PostgreSQL (``FOR UPDATE SKIP LOCKED``)
and a process killed mid-send leaves a row that is retried once the lease runs out: at most
one duplicate, with the same Message-ID, for a kill inside the SMTP transaction. Rows are
claimed in id order, one recipient's mail never overtaking its own earlier mail.

A delivery is written by the store's recorder (``triage.outbox.recorders``): the row at
once, or, on SQLite, a side database that the next claim applies. Failures, retries, dead
letters, held refusals (triage.relay) and suppressed rows (triage.addresses) are written to
the table directly: they are rare, and decide what happens next.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Row, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased, sessionmaker

from triage.addresses import REASONS
from triage.backoff import Backoff
from triage.outbox.recorders import Delivery, InTable, Recorder
from triage.relay import Held
from triage.smtp import SendResult
from triage.storage.models import Event, Outbox, WorkOrder

log = logging.getLogger(__name__)

# Kinds of mail that go to clients (the others, escalations and pages, go to our staff).
CLIENT_KINDS = frozenset({"ack", "reply"})
# Rows that are not mail: POSTed by their own sweep (triage.notify_send).
WEBHOOK_KINDS = ("webhook",)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    to_addr: str
    attempts: int
    claimed_until: datetime  # the lease; also the claim's token (a reclaim changes it)
    message_id: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    work_order_id: int | None = None
    created_at: datetime | None = None
    # Acknowledgments: the work order's columns they show (``ACK_COLUMNS``), None when it
    # has no number yet; other kinds render from ``context`` alone.
    work_order: Any = None

    @property
    def number(self) -> str | None:
        """The work order's number, for logs (acknowledgments only)."""
        return self.work_order.number if self.work_order is not None else None


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base: float = 30.0
    cap: float = 3600.0

    def delay(self, attempt: int) -> float:
        """Seconds before retry ``attempt`` (1 = first): the shared capped, jittered backoff."""
        if self.base <= 0:
            return 0.0
        return Backoff(base=self.base, cap=max(self.cap, self.base)).ceiling(
            max(0, attempt - 1)) * random.random()


_CLAIM_COLUMNS = (Outbox.id, Outbox.kind, Outbox.to_addr, Outbox.attempts, Outbox.message_id,
                  Outbox.context, Outbox.created_at, Outbox.work_order_id)
# What an acknowledgment shows of its work order (triage.ack.AckView).
ACK_COLUMNS = (WorkOrder.id, WorkOrder.number, WorkOrder.request_type, WorkOrder.priority,
               WorkOrder.contract, WorkOrder.response_due, WorkOrder.callback_due,
               WorkOrder.fulfil_due, WorkOrder.milestones, WorkOrder.requester_name)


def answer_of(result: SendResult) -> str:
    """What the server said, for ``last_error``, logs and /readyz: ``550 5.1.1 ...``, or the
    text alone when no SMTP reply came (``connection failed: ...``)."""
    return result.answer.strip()[:1000]


class OutboxStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        retry: RetryPolicy,
        clock: Callable[[], datetime],
        lease: timedelta = timedelta(minutes=10),
        recorder: Recorder | None = None,
    ) -> None:
        self._sessions = sessions
        self.recorder: Recorder = recorder if recorder is not None else InTable()
        self._engine: Engine = sessions.kw["bind"]  # the hot paths use Core on a connection
        self._retry = retry
        self._clock = clock
        self._lease = lease

    def lease_left(self, job: Job) -> timedelta:
        return job.claimed_until - self._clock()

    def _mine(self, row: Outbox | None, job: Job) -> bool:
        """Still our claim? A lease that ran out may have been taken by another sweep."""
        return (row is not None and row.status == "sending"
                and row.claimed_until == job.claimed_until)

    def claim(self, limit: int = 10, *, kinds: Sequence[str] | None = None) -> list[Job]:
        """Due rows, oldest first, leased to this sweep. Core statements, not the ORM: a
        sweep claims up to 50 rows, and ORM objects for them cost more than the SMTP work
        (bench/results.md). ``kinds``: only those (the webhook sweep's); None: all mail,
        no webhook rows (``WEBHOOK_KINDS``, which are not sent over SMTP)."""
        now = self._clock()
        until = now + self._lease
        with self._engine.begin() as c:
            # Before anything is claimed: a row delivered under a lease that ran out must
            # not be taken while its delivery is still waiting to be applied.
            applied = self.recorder.apply(c)
            earlier = aliased(Outbox)
            # One recipient's mail leaves in order: a row waits while an earlier row to the
            # same address is backing off or in another sweep's hands. Other recipients are
            # not held up by one greylisting server.
            blocked = exists().where(
                earlier.to_addr == Outbox.to_addr,
                earlier.id < Outbox.id,
                or_(
                    (earlier.status == "pending") & (earlier.next_attempt_at > now),
                    (earlier.status == "sending") & (earlier.claimed_until >= now),
                ),
            )
            # Pending rows that are due, and rows whose lease ran out, each walked in id order
            # along (status, id) and cut at ``limit``; then the oldest ``limit`` of both. One
            # query with OR read every pending row and sorted them, per claim.
            rows: list[Row[*tuple[Any, ...]]] = []
            which = (Outbox.kind.in_(kinds) if kinds is not None
                     else Outbox.kind.not_in(WEBHOOK_KINDS))
            for due in ((Outbox.status == "pending") & (Outbox.next_attempt_at <= now),
                        (Outbox.status == "sending") & (Outbox.claimed_until < now)):
                q = (select(*_CLAIM_COLUMNS).where(due, ~blocked, which).order_by(Outbox.id)
                     .limit(limit))
                if c.dialect.name == "postgresql":
                    q = q.with_for_update(skip_locked=True)
                rows += c.execute(q).all()
            rows = sorted(rows, key=lambda r: r.id)[:limit]
            t = Outbox.__table__
            if rows:
                c.execute(update(t).where(t.c.id.in_([r.id for r in rows]))
                          .values(status="sending", claimed_until=until,
                                  attempts=t.c.attempts + 1))
            # One query for the work orders, not one per row.
            wo_ids = {r.work_order_id for r in rows if r.work_order_id is not None}
            wos: dict[int, Any] = {}
            if wo_ids:
                wos = {w.id: w for w in c.execute(
                    select(*ACK_COLUMNS).where(WorkOrder.id.in_(wo_ids)))}
        if applied is not None:
            applied()
        jobs: list[Job] = []
        for row in rows:
            wo = wos.get(row.work_order_id or 0) if row.kind == "ack" else None
            jobs.append(Job(row.id, row.kind, row.to_addr, row.attempts + 1, until,
                            row.message_id, dict(row.context or {}), row.work_order_id,
                            row.created_at,
                            wo if wo is not None and wo.number is not None else None))
        return jobs

    @property
    def max_attempts(self) -> int:
        return self._retry.max_attempts

    def record(self, job: Job, result: SendResult, *, hold: bool = False) -> None:
        """The server's answer for one row, committed before the next mail goes out.
        ``hold``: a permanent refusal that may be the relay's (triage.relay): the row backs
        off as after a temporary failure instead of being dead-lettered.

        A delivery, the common case, goes to the recorder (``triage.outbox.recorders``)."""
        now = self._clock()
        if not result.ok:
            with self._sessions.begin() as s:
                self._record_failure(s, job, result, now, hold)
            return
        self.recorder.record(self._engine, Delivery(
            job.id, job.claimed_until, now, answer_of(result), job.kind, job.work_order_id,
            job.attempts))

    def flush(self) -> None:
        """Move deferred deliveries into the outbox table now (the next claim would)."""
        if not self.recorder.deferred:
            return
        with self._engine.begin() as c:
            applied = self.recorder.apply(c)
        if applied is not None:
            applied()

    def _record_failure(self, s: Session, job: Job, result: SendResult,
                        now: datetime, hold: bool = False) -> None:
        answer = answer_of(result)
        row = s.get(Outbox, job.id)
        if not self._mine(row, job):
            log.warning("outbox row %s: lease lost before the result was recorded", job.id)
            return
        assert row is not None
        row.claimed_until = None
        if result.transport_failed:
            # A wrong password or a bad certificate must not dead-letter the whole
            # outbox: keep the row, do not count the attempt, retry after backoff.
            # The runner pauses the whole outbox; the row stays due so that, when the
            # server is back, everything leaves in the original order.
            row.status, row.last_error = "pending", answer
            row.attempts = max(0, row.attempts - 1)
            row.next_attempt_at = now
        elif (result.permanent and not hold) or row.attempts >= self._retry.max_attempts:
            row.status, row.last_error = "dead", answer
            s.add(Event(work_order_id=row.work_order_id, actor="system",
                        action=f"{row.kind}_failed",
                        detail={"outbox": row.id, "answer": answer}, at=now))
        else:
            row.status, row.last_error = "pending", answer
            row.next_attempt_at = now + timedelta(seconds=self._retry.delay(row.attempts))

    def dead_letter(self, job: Job, reason: str) -> None:
        """A row that cannot be rendered is not retried forever."""
        with self._sessions.begin() as s:
            row = s.get(Outbox, job.id)
            if row is not None and self._mine(row, job):
                row.status, row.last_error, row.claimed_until = "dead", reason[:1000], None

    def settle_held(self, held: Sequence[Held], *, relay: bool) -> int:
        """Held refusals, judged (triage.relay). ``relay``: the relay refused everyone, so
        each row is due now with its attempt given back (the outbox is paused meanwhile).
        Otherwise the recipients refused: dead-lettered, as any 5xx was. A row claimed again
        since it was held (its attempts moved on) is left to that claim. Returns rows settled.
        """
        now = self._clock()
        settled = 0
        with self._sessions.begin() as s:
            for h in held:
                row = s.get(Outbox, h.outbox_id)
                if row is None or row.status != "pending" or row.attempts != h.attempt:
                    continue
                settled += 1
                if relay:
                    row.attempts = max(0, row.attempts - 1)
                    row.next_attempt_at = now
                    continue
                row.status = "dead"
                s.add(Event(work_order_id=row.work_order_id, actor="system",
                            action=f"{row.kind}_failed",
                            detail={"outbox": row.id, "answer": row.last_error}, at=now))
        return settled

    def suppress(self, refused: Sequence[tuple[Job, str]]) -> None:
        """Rows the address policy refuses (triage.addresses): never sent, not retried; the
        attempt the claim counted is given back, and an event holds the reason."""
        if not refused:
            return
        now = self._clock()
        with self._sessions.begin() as s:
            for job, reason in refused:
                row = s.get(Outbox, job.id)
                if row is None or not self._mine(row, job):
                    continue
                row.status, row.claimed_until = "suppressed", None
                row.attempts = max(0, row.attempts - 1)
                row.last_error = f"suppressed: {REASONS.get(reason, reason)}"[:1000]
                s.add(Event(work_order_id=row.work_order_id, actor="system",
                            action=f"{row.kind}_suppressed",
                            detail={"outbox": row.id, "reason": reason}, at=now))

    def last_client_recipient(self) -> str | None:
        """The recipient of the newest delivered client mail (acknowledgment or staff
        reply): an address the relay accepted, for its probe (triage.relay)."""
        with self._sessions() as s:
            for kind, to_addr in s.execute(
                    select(Outbox.kind, Outbox.to_addr).where(Outbox.status == "sent")
                    .order_by(Outbox.id.desc()).limit(50)):
                if kind in CLIENT_KINDS:
                    return str(to_addr)
        return None

    def release(self, jobs: Sequence[Job]) -> None:
        """Give back claimed rows not attempted (sweep stopped early): no attempt is counted."""
        if not jobs:
            return
        with self._sessions.begin() as s:
            for job in jobs:
                row = s.get(Outbox, job.id)
                if row is not None and self._mine(row, job):
                    row.status, row.claimed_until = "pending", None
                    row.attempts = max(0, row.attempts - 1)

    def pending_count(self) -> int:
        with self._sessions() as s:
            return s.scalar(select(func.count(Outbox.id)).where(
                Outbox.status.in_(("pending", "sending")))) or 0
