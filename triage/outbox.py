"""Drain the outbox: claim due rows, render, send through a transport, record the answer.

Rows are claimed with a lease (``status='sending'``, ``claimed_until``) in their own short
transaction, so several processes can sweep one PostgreSQL (``FOR UPDATE SKIP LOCKED``)
and a process killed mid-send leaves a row that is retried once the lease runs out: at most
one duplicate, with the same Message-ID, for a kill inside the SMTP transaction.
Rows go out in id order. A server that cannot be reached (connect/TLS/AUTH) pauses the
whole outbox and keeps every row due, so order survives an outage; a temporary refusal of
one message (4xx) backs that row off and holds only later mail to the same recipient. A
permanent refusal (5xx) is held the same way until it is known whether the recipient or
the relay refused (triage.relay): the recipient's is dead-lettered, the relay's pauses the
outbox like an outage. A row whose recipient the address policy refuses (triage.addresses)
is never sent: its status is ``suppressed``, with an event giving the reason.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, aliased, sessionmaker

from triage.ack import AckView
from triage.addresses import REASONS
from triage.mailbox.backoff import Backoff
from triage.relay import Held
from triage.sentlog import Delivery, SentLog
from triage.smtp import SendResult
from triage.storage.engine import in_chunks
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
    view: AckView | None  # acknowledgments; other kinds render from ``context``
    claimed_until: datetime  # the lease; also the claim's token (a reclaim changes it)
    message_id: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    work_order_id: int | None = None


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
# What an acknowledgment shows of its work order (AckView).
_ACK_WO_COLUMNS = (WorkOrder.id, WorkOrder.number, WorkOrder.request_type, WorkOrder.priority,
                   WorkOrder.contract, WorkOrder.response_due, WorkOrder.callback_due,
                   WorkOrder.fulfil_due, WorkOrder.milestones, WorkOrder.requester_name)

# Built once: a statement built per call spends as long on its cache key as on the database.
_t = Outbox.__table__
_MARK_SENT = (update(_t)
              .where(_t.c.id == bindparam("r_id"), _t.c.status == "sending",
                     _t.c.claimed_until == bindparam("r_until"))
              .values(status="sent", sent_at=bindparam("r_now"), last_error=None,
                      claimed_until=None, smtp_response=bindparam("r_answer")))
# A logged delivery (triage.sentlog): still ours if no other claim counted up ``attempts``.
_MARK_LOGGED = (update(_t)
                .where(_t.c.id == bindparam("r_id"), _t.c.status == "sending",
                       _t.c.attempts == bindparam("r_attempt"))
                .values(status="sent", sent_at=bindparam("r_now"), last_error=None,
                        claimed_until=None, smtp_response=bindparam("r_answer")))
_SENT_EVENT = insert(Event.__table__)


def answer_of(result: SendResult) -> str:
    """What the server said, for ``last_error``, logs and /readyz: ``550 5.1.1 ...``, or the
    text alone when no SMTP reply came (``connection failed: ...``)."""
    return result.answer.strip()[:1000]


def _sent_event(d: Delivery) -> dict[str, Any]:
    """The ``ack_sent`` (or other kind's) event of a delivery, as ``_SENT_EVENT`` takes it."""
    return {"work_order_id": d.work_order_id, "actor": "system", "action": f"{d.kind}_sent",
            "detail": {"outbox": d.outbox_id}, "at": d.at}


def ack_view(row: Any, wo: Any, *, timezone: str, priority_meaning: str,
             fulfil_within: str | None) -> AckView:
    """What an acknowledgment says, from its outbox row and its work order's values (ORM
    objects or Core rows): the sender renders from this, and so does the work-order page
    (``triage.desk.sent``), so the page shows the words that were sent."""
    ctx = row.context or {}
    return AckView(
        number=wo.number,
        request_type=wo.request_type,
        priority=wo.priority,
        priority_meaning=priority_meaning,
        to_addr=row.to_addr,
        message_id=row.message_id,
        in_reply_to=ctx.get("in_reply_to"),
        references=tuple(ctx.get("references") or ()),
        subject=str(ctx.get("subject") or ""),
        timezone=timezone,
        response_due=wo.response_due,
        callback_due=wo.callback_due,
        fulfil_due=wo.fulfil_due,
        milestones=tuple(
            (m["name"], datetime.fromisoformat(m["due"])) for m in (wo.milestones or [])
        ),
        date=row.created_at,
        requester_name=wo.requester_name or "",
        fulfil_within=fulfil_within,
    )


class OutboxStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        retry: RetryPolicy,
        clock: Callable[[], datetime],
        timezone_for: Callable[[str], str],
        priority_meaning: Callable[[str], str],
        lease: timedelta = timedelta(minutes=10),
        sent_log: SentLog | None = None,
        fulfil_within: Callable[[str, str], str | None] = lambda _type, _priority: None,
    ) -> None:
        self._sessions = sessions
        # SQLite: deliveries are appended here and applied by the next claim (triage.sentlog).
        self.sent_log = sent_log
        self._engine: Engine = sessions.kw["bind"]  # the hot paths use Core on a connection
        self._retry = retry
        self._clock = clock
        self._tz = timezone_for
        self._meaning = priority_meaning
        self._within = fulfil_within
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
        snapshots: list[Path] = []
        with self._engine.begin() as c:
            if self.sent_log is not None:
                # Before anything is claimed: a delivery only in the log must not be taken
                # for a row whose lease ran out.
                snapshots = self._apply_sent_log(c)
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
                    select(*_ACK_WO_COLUMNS).where(WorkOrder.id.in_(wo_ids)))}
        self._released(snapshots)
        jobs: list[Job] = []
        for row in rows:
            view = (self._view(row, wos.get(row.work_order_id or 0)) if row.kind == "ack"
                    else None)
            jobs.append(Job(row.id, row.kind, row.to_addr, row.attempts + 1, view, until,
                            row.message_id, dict(row.context or {}), row.work_order_id))
        return jobs

    def _view(self, row: Any, wo: Any) -> AckView | None:
        if wo is None or wo.number is None:
            return None
        return ack_view(row, wo, timezone=self._tz(wo.contract),
                        priority_meaning=self._meaning(wo.priority),
                        fulfil_within=self._within(wo.request_type, wo.priority))

    @property
    def max_attempts(self) -> int:
        return self._retry.max_attempts

    def record(self, job: Job, result: SendResult, *, hold: bool = False) -> None:
        """The server's answer for one row, committed before the next mail goes out.
        ``hold``: a permanent refusal that may be the relay's (triage.relay): the row backs
        off as after a temporary failure instead of being dead-lettered.

        A delivery, the common case, is two Core statements on one connection: the lease
        check is in the UPDATE's WHERE, so no row is read first (a fifth of the ORM's cost
        per row; bench/results.md)."""
        now = self._clock()
        if not result.ok:
            with self._sessions.begin() as s:
                self._record_failure(s, job, result, now, hold)
            return
        delivery = Delivery(job.id, job.claimed_until, now, answer_of(result), job.kind,
                            job.work_order_id, job.attempts)
        if self.sent_log is not None:
            self.sent_log.append(delivery)
            return
        with self._engine.begin() as c:
            if not self._mark_sent(c, delivery):
                log.warning("outbox row %s: lease lost before the result was recorded", job.id)

    def records_in_log(self, result: SendResult) -> bool:
        """True when recording ``result`` is a file append (no database write)."""
        return self.sent_log is not None and result.ok

    def flush(self) -> None:
        """Move logged deliveries into the outbox table now (the next claim would)."""
        if self.sent_log is None:
            return
        with self._engine.begin() as c:
            snapshots = self._apply_sent_log(c)
        self._released(snapshots)

    def _apply_sent_log(self, c: Connection) -> list[Path]:
        """The logged deliveries whose row is still ``sending`` under the same claim (the
        others were applied before, or another claim took the row), in three statements: the
        caller holds the write transaction, so what is read here cannot change under it."""
        assert self.sent_log is not None
        deliveries, snapshots = self.sent_log.take()
        if not deliveries:
            return snapshots
        by_id: dict[int, list[Delivery]] = {}
        for d in deliveries:
            by_id.setdefault(d.outbox_id, []).append(d)
        mine: list[Delivery] = []
        for chunk in in_chunks(by_id):
            for row_id, status, attempts in c.execute(
                    select(Outbox.id, Outbox.status, Outbox.attempts)
                    .where(Outbox.id.in_(chunk))):
                if status == "sending":
                    mine += [d for d in by_id[row_id] if d.attempt == attempts][:1]
        if mine:
            c.execute(_MARK_LOGGED, [{"r_id": d.outbox_id, "r_attempt": d.attempt,
                                      "r_now": d.at, "r_answer": d.answer} for d in mine])
            c.execute(_SENT_EVENT, [_sent_event(d) for d in mine])
        return snapshots

    def _released(self, snapshots: list[Path]) -> None:
        """After the commit that holds the snapshots' deliveries."""
        if snapshots and self.sent_log is not None:
            self.sent_log.release(snapshots)

    @staticmethod
    def _mark_sent(c: Connection, d: Delivery) -> bool:
        """Sent, if still ours (the lease check is in the WHERE), with its event; idempotent."""
        mine = c.execute(_MARK_SENT, {"r_id": d.outbox_id, "r_until": d.claimed_until,
                                      "r_now": d.at, "r_answer": d.answer}).rowcount
        if mine != 1:
            return False
        c.execute(_SENT_EVENT, _sent_event(d))
        return True

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
