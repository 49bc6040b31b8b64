"""Store a batch of fetched messages: dedupe, thread, open work orders with their SLA due
dates and queue acknowledgments, all in one transaction per batch.

Two paths, one result. The fast path looks up everything a batch needs in one query per
kind (fetch keys, dedupe keys, threads, clients, ack rates), decides every message in Python
and writes the rows with bulk inserts, under one savepoint: ~25 statements for a batch of 50
instead of ~17 per message. A message the SLA engine (or anything else in deciding) refuses
is quarantined alone, as before. A message that may answer another message of its own batch
is looked up the careful way, after the rows planned before it are written. Should a write
fail (PostgreSQL refusing a row another poller created first, say), the savepoint is rolled
back and the batch goes through the careful path: a savepoint per message, so one bad
message becomes a quarantine record instead of rolling back its neighbours.

Knows nothing of IMAP or SMTP: it takes plain data (``Ingest``) and returns plain data
(``Outcome``). The caller marks the mailbox only after ``store_batch`` has committed.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from classifiers.types import Decision
from triage.messages import DueDates, ParsedEmail, RawMessage
from triage.parse import build_reply_headers, clean_header
from triage.screening import screening_record
from triage.sla import SlaPolicy
from triage.slamarks import apply_marks, end_pause
from triage.storage.engine import in_chunks
from triage.storage.models import (
    AttachmentRow,
    Client,
    Event,
    Fetch,
    MailboxState,
    Message,
    Outbox,
    RawBlob,
    WorkOrder,
)

log = logging.getLogger(__name__)

TAG_RE = re.compile(r"\[(ITX-\d{6,})\]")
HEADER_SCREENED = frozenset({"auto_reply", "bounce", "bulk", "own"})


@dataclass(frozen=True)
class Ingest:
    """One fetched message and what the earlier stages made of it.

    ``error`` set (parse failure, oversize) means: quarantine with this reason.
    """

    raw: RawMessage
    parsed: ParsedEmail | None = None
    decision: Decision | None = None
    error: str | None = None


@dataclass(frozen=True)
class Outcome:
    uid: str
    disposition: str  # work_order | reply | non_request | quarantined | duplicate | already
    work_order: str | None = None  # number
    acked: bool = False
    reason: str | None = None
    # Set for a new work order: what /metrics counts (never names or addresses).
    request_type: str | None = None
    priority: str | None = None
    confidence: float | None = None
    needs_review: bool = False
    screened_by: str | None = None  # a non-request's: header | model | store (metrics)


@dataclass(frozen=True)
class StoreConfig:
    from_address: str
    ack_rate_per_hour: int
    attachments_dir: Path
    review_threshold: float
    mailbox_state: bool = True
    at_risk_fraction: float = 0.75  # for the queue's SLA marks (triage.slamarks)


def thread_distrust(p: ParsedEmail, wo: WorkOrder) -> str | None:
    """Why ``p`` may not join ``wo`` (None: it may). Headers and tags can both be forged:
    only the requester or the same client may add to (and reopen) a work order, and only
    when From names one sender unambiguously (triage.sender); anyone else opens their own,
    flagged for review."""
    if not p.from_trusted:
        return f"refers to {wo.number} but its From is untrusted; opened separately"
    if p.from_addr == wo.requester or client_key(p.from_addr) == wo.client.domain:
        return None
    return f"refers to {wo.number} of another client; opened separately"


def format_number(pk: int) -> str:
    return f"ITX-{pk:06d}"


def dedupe_key(parsed: ParsedEmail | None, raw: RawMessage) -> str:
    if parsed and parsed.message_id:
        return "mid:" + parsed.message_id[:1000]
    if parsed:
        return "sha:" + parsed.content_hash
    return f"fetch:{raw.mailbox}:{raw.uidvalidity}:{raw.uid}"[:1024]


# Mail providers whose users are not one client: on these, "same client" means same address.
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "outlook.com", "hotmail.com",
    "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me",
    "protonmail.com", "gmx.com", "gmx.net", "mail.com", "zoho.com", "yandex.com",
    "comcast.net", "verizon.net", "att.net", "sbcglobal.net", "cox.net", "earthlink.net",
})


def _domain(addr: str) -> str:
    return addr.rsplit("@", 1)[-1].lower() if "@" in addr else ""


def client_key(addr: str) -> str:
    """The ``clients.domain`` a sender belongs to: the domain, or the address on free mail."""
    domain = _domain(addr)
    if not domain or len(domain) > 253:
        return "unknown"
    return addr.lower()[:255] if domain in FREEMAIL else domain


def message_values(item: Ingest, key: str | None, disposition: str, reason: str | None,
                   now: datetime) -> dict[str, Any]:
    """The ``messages`` row of an inbound message (both store paths write it from here)."""
    raw, p = item.raw, item.parsed
    screened_by, screening = screening_record(item.decision, disposition, reason)
    return dict(
        direction="in", dedupe_key=key,
        message_id=None if p is None else p.message_id,
        content_hash=p.content_hash if p else "", size=raw.size,
        from_addr="" if p is None else p.from_addr,
        from_name="" if p is None else p.from_name,
        subject="" if p is None else p.subject,
        in_reply_to=None if p is None else p.in_reply_to,
        references=[] if p is None else list(p.references),
        headers=[] if p is None else [list(h) for h in p.headers],
        body_text="" if p is None else p.text,
        body_html=None if p is None else p.html,
        defects=[] if p is None else list(p.defects),
        received_at=raw.internal_date or now, disposition=disposition, reason=reason,
        screened_by=screened_by, screening=screening, created_at=now,
    )


def work_order_values(p: ParsedEmail, d: Decision, priority: str, contract: str,
                      received: datetime, due: DueDates, review_reason: str | None,
                      review_threshold: float, now: datetime) -> dict[str, Any]:
    """The columns of a new work order, and why it needs review (both store paths)."""
    reasons = [r for r in (review_reason, d.review_note) if r]
    if d.confidence < review_threshold or (d.needs_review and not d.review_note):
        reasons.append(f"low confidence {d.confidence:.2f}")
    if not p.from_addr:
        reasons.append("no usable sender address")
    elif not p.from_trusted:
        reasons.append(f"untrusted sender: {p.from_problem}")
    return dict(
        requester=p.from_addr, requester_name=p.from_name,
        subject=clean_header(p.subject, 500), request_type=d.label,
        confidence=float(d.confidence), priority=priority, status="new",
        needs_review=bool(reasons), review_reason="; ".join(reasons) or None,
        classifier_version=d.model_version,
        evidence=[{"source": e.source, "text": e.text, "weight": e.weight}
                  for e in d.evidence],
        cues=list(d.cues), contract=contract, received_at=received, **due_columns(due),
        root_message_id=p.message_id, created_at=now, updated_at=now, pauses=[],
    )


def due_columns(due: DueDates) -> dict[str, Any]:
    """A new work order's SLA columns: what its row holds and its queue marks read."""
    return dict(clock_start=due.clock_start, response_due=due.response_due,
                callback_due=due.callback_due, fulfil_due=due.fulfil_due,
                milestones=[{"name": n, "due": t.isoformat()} for n, t in due.milestones])


class RetryBatch(Exception):
    """A failure of the environment (disk, database connection), not of the message: the
    whole batch is rolled back and left unmarked, so it is fetched and tried again."""


class WorkOrderStore:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: SlaPolicy,
        config: StoreConfig,
        clock: Callable[[], datetime],
        reads: sessionmaker[Session] | None = None,
    ) -> None:
        self._sessions = sessions
        self._reads = reads or sessions
        self._policy = policy
        self._cfg = config
        self._clock = clock
        self.fast = True  # False: every batch takes the careful path (tests compare the two)
        self.careful_batches = 0  # batches the fast path handed to the careful one

    # ---- reading ---------------------------------------------------------------------------
    def stored_uids(self, mailbox: str, uidvalidity: int, uids: Sequence[str]) -> set[str]:
        """UIDs of this batch already stored: after a crash before ``mark_done`` they come back."""
        if not uids:
            return set()
        try:
            with self._reads() as s:
                rows = s.scalars(
                    select(Fetch.uid).where(
                        Fetch.mailbox == mailbox,
                        Fetch.uidvalidity == uidvalidity,
                        Fetch.uid.in_(list(uids)),
                    )
                )
                return set(rows)
        except _ENVIRONMENT as e:  # the database away: the batch waits, as a failed write
            raise RetryBatch(f"{type(e).__name__} while reading a batch's fetch keys") from e

    # ---- writing ---------------------------------------------------------------------------
    def store_batch(self, items: Sequence[Ingest]) -> list[Outcome]:
        outcomes: list[Outcome] | None = None
        figures: _SlaFigures | None = None
        if self.fast and items:
            try:
                figures = self._before_the_lock(items)
            except _ENVIRONMENT as e:
                raise RetryBatch(f"{type(e).__name__} while storing a batch") from e
        with self._sessions.begin() as s:
            if figures is not None:
                try:
                    with s.begin_nested():
                        outcomes = _FastBatch(self, s, items, figures).run()
                except _ENVIRONMENT as e:
                    raise RetryBatch(f"{type(e).__name__} while storing a batch") from e
                except Exception as e:  # never lose the batch: the careful path decides
                    # The type only, as below: a database error's text can carry a body.
                    log.warning("bulk store failed (%s); storing message by message",
                                type(e).__name__)
                    self.careful_batches += 1
            if outcomes is None:
                outcomes = [self._store_one_guarded(s, item) for item in items]
            if self._cfg.mailbox_state and items:
                self._checkpoint(s, items)
        return outcomes

    def _before_the_lock(self, items: Sequence[Ingest]) -> _SlaFigures:
        """What the fast path can work out before its write transaction: attachments go to
        disk (content-addressed: a rolled-back batch leaves an orphan at most) and each
        request's due dates and queue marks under its client's contract as read now.

        On SQLite the write transaction holds the database's only write lock, which the
        outbox needs for every mail it records as sent; these were ~40 % of the time the
        lock was held (bench/results.md). A contract changed since is simply worked out
        again inside (the figures are keyed by it)."""
        now = self._clock()
        wanted: dict[str, list[Ingest]] = {}
        for item in items:
            p, d = item.parsed, item.decision
            if p is None or d is None or item.error:
                continue
            for att in p.attachments:
                self._save_attachment(att.sha256, att.payload)
            if d.is_request:
                wanted.setdefault(client_key(p.from_addr), []).append(item)
        figures = _SlaFigures(self._policy, self._cfg.at_risk_fraction)
        if not wanted:
            return figures
        contracts: dict[str, str] = {}
        with self._reads() as rs:
            for chunk in in_chunks(wanted):
                contracts.update(rs.execute(select(Client.domain, Client.contract)
                                            .where(Client.domain.in_(chunk))).all())
        for ckey, batch in wanted.items():
            for item in batch:
                raw, d = item.raw, item.decision
                assert d is not None
                if raw.internal_date is None or raw.internal_date > now:
                    continue
                # Later, ``min(internal_date, now)`` is this same instant.
                try:
                    figures.get(d.label, d.priority or "normal",
                                contracts.get(ckey, "standard"), raw.internal_date)
                except Exception:
                    # A type, priority or contract the policy cannot serve: left out here,
                    # the same call inside fails for this message alone and quarantines it.
                    # Raised from here it would fail the whole batch on every poll.
                    continue
        return figures

    def _store_one_guarded(self, s: Session, item: Ingest) -> Outcome:
        try:
            with s.begin_nested():
                return self._store_one(s, item)
        except (OSError, OperationalError, InterfaceError) as e:
            # Disk full, attachments folder gone, database unreachable or deadlocked: the
            # message is fine; retrying later must not find it quarantined.
            raise RetryBatch(f"{type(e).__name__} while storing uid={item.raw.uid}") from e
        except Exception as e:  # one bad message must never take the batch down
            # The type only: str(e) of a database error carries the statement's parameters,
            # which include the message body.
            log.error("storing uid=%s failed (%s); quarantining", item.raw.uid,
                      type(e).__name__)
            reason = f"store failed: {type(e).__name__}"
            with s.begin_nested():
                return self._quarantine(s, Ingest(raw=item.raw, parsed=None, error=reason))

    def _checkpoint(self, s: Session, items: Sequence[Ingest]) -> None:
        raw = items[-1].raw
        state = s.get(MailboxState, raw.mailbox)
        now = self._clock()
        numeric = [int(i.raw.uid) for i in items if i.raw.uid.isdigit()]
        top = max(numeric) if numeric else 0
        if state is None:
            s.add(MailboxState(mailbox=raw.mailbox, uidvalidity=raw.uidvalidity, last_uid=top,
                               updated_at=now))
            return
        if state.uidvalidity != raw.uidvalidity:
            log.warning("UIDVALIDITY of %s changed %s -> %s; Message-ID dedupe keeps it safe",
                        raw.mailbox, state.uidvalidity, raw.uidvalidity)
            s.add(Event(actor="system", action="uidvalidity_changed",
                        detail={"mailbox": raw.mailbox, "old": state.uidvalidity,
                                "new": raw.uidvalidity}, at=now))
            state.uidvalidity, state.last_uid = raw.uidvalidity, 0
        state.last_uid = max(state.last_uid, top)
        state.updated_at = now

    def _fetch_row(self, s: Session, raw: RawMessage, message_pk: int, dup: bool = False) -> None:
        s.add(Fetch(mailbox=raw.mailbox, uidvalidity=raw.uidvalidity, uid=raw.uid,
                    message_pk=message_pk, duplicate=dup, fetched_at=self._clock()))

    def _store_one(self, s: Session, item: Ingest) -> Outcome:
        raw, parsed = item.raw, item.parsed
        if s.get(Fetch, (raw.mailbox, raw.uidvalidity, raw.uid)) is not None:
            return Outcome(raw.uid, "already")
        if item.error or parsed is None or item.decision is None:
            return self._quarantine(s, item)
        key = dedupe_key(parsed, raw)
        existing = s.scalar(select(Message.id).where(Message.dedupe_key == key))
        if existing is not None:
            self._fetch_row(s, raw, existing, dup=True)
            return Outcome(raw.uid, "duplicate", reason="same Message-ID already stored")

        decision = item.decision
        if parsed.from_addr == self._cfg.from_address or self._is_own(s, parsed):
            return self._non_request(s, item, key, "own")
        if not decision.is_request and (decision.non_request_kind in HEADER_SCREENED):
            return self._non_request(s, item, key, decision.non_request_kind or "auto_reply")

        wo, trusted_reason = self._find_thread(s, parsed)
        if wo is not None and trusted_reason is None:
            return self._reply(s, item, key, wo)
        if not decision.is_request:
            return self._non_request(s, item, key, decision.non_request_kind or "other")
        return self._open(s, item, key, review_reason=trusted_reason)

    # ---- dispositions ----------------------------------------------------------------------
    def _message_row(
        self, s: Session, item: Ingest, key: str | None, disposition: str, reason: str | None,
        wo_id: int | None = None,
    ) -> Message:
        raw, p = item.raw, item.parsed
        row = Message(**message_values(item, key, disposition, reason, self._clock()),
                      work_order_id=wo_id)
        s.add(row)
        s.flush()
        data = raw.data if raw.data is not None else raw.head
        s.add(RawBlob(message_pk=row.id, data=data, truncated=raw.data is None))
        if p is not None:
            for att in p.attachments:
                path = self._save_attachment(att.sha256, att.payload)
                s.add(AttachmentRow(message_pk=row.id, filename=att.filename,
                                    content_type=att.content_type, size=att.size,
                                    sha256=att.sha256, path=str(path)))
        self._fetch_row(s, raw, row.id)
        return row

    def _save_attachment(self, sha: str, payload: bytes) -> Path:
        """Content-addressed, so a rolled-back batch leaves at most an orphan, never a clash."""
        path = self._cfg.attachments_dir / sha[:2] / sha
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(payload)
            tmp.replace(path)
        return path

    def _quarantine(self, s: Session, item: Ingest) -> Outcome:
        reason = item.error or "no decision"
        key = f"fetch:{item.raw.mailbox}:{item.raw.uidvalidity}:{item.raw.uid}"[:1024]
        row = self._message_row(s, Ingest(raw=item.raw), key, "quarantined", reason)
        if item.parsed is not None:
            row.subject, row.from_addr = item.parsed.subject, item.parsed.from_addr
        log.warning("quarantined uid=%s: %s", item.raw.uid, reason)
        return Outcome(item.raw.uid, "quarantined", reason=reason)

    def _non_request(self, s: Session, item: Ingest, key: str, kind: str) -> Outcome:
        row = self._message_row(s, item, key, "non_request", kind)
        return Outcome(item.raw.uid, "non_request", reason=kind, screened_by=row.screened_by)

    def _is_own(self, s: Session, parsed: ParsedEmail) -> bool:
        """Our own mail come back (a forward, a loop): its Message-ID is one we generated."""
        if not parsed.message_id:
            return False
        return s.scalar(select(Outbox.id).where(Outbox.message_id == parsed.message_id)) is not None

    def _find_thread(self, s: Session, p: ParsedEmail) -> tuple[WorkOrder | None, str | None]:
        """The work order this answers, and a review reason when only an untrusted tag matched."""
        wo: WorkOrder | None = None
        ids = [i for i in (p.in_reply_to, *p.references) if i]
        if ids:
            wo_id = s.scalar(select(Outbox.work_order_id).where(Outbox.message_id.in_(ids),
                                                                Outbox.work_order_id.is_not(None)))
            if wo_id is None:
                wo_id = s.scalar(select(Message.work_order_id).where(
                    Message.message_id.in_(ids), Message.work_order_id.is_not(None)))
            if wo_id is not None:
                wo = s.get(WorkOrder, wo_id)
        if wo is None:
            m = TAG_RE.search(p.subject)
            if m:
                wo = s.scalar(select(WorkOrder).where(WorkOrder.number == m.group(1)))
        if wo is None:
            return None, None
        return wo, thread_distrust(p, wo)

    def _reply(self, s: Session, item: Ingest, key: str, wo: WorkOrder) -> Outcome:
        assert item.decision is not None
        now = self._clock()
        self._message_row(s, item, key, "reply", None, wo_id=wo.id)
        detail: dict[str, Any] = {"from": item.parsed.from_addr if item.parsed else ""}
        # "thanks, all fixed" joins the thread but does not reopen a resolved work order.
        if wo.status == "resolved" and item.decision.is_request:
            wo.status, wo.resolved_at = "open", None
            s.add(Event(work_order_id=wo.id, actor="system", action="reopened",
                        detail=detail, at=now))
        elif wo.status == "waiting_client":
            # The client answered: the ball is ours again and the clocks run (the pause ends).
            end_pause(wo, now)
            wo.status = "open"
            s.add(Event(work_order_id=wo.id, actor="system", action="status",
                        detail={**detail, "status": "open", "was": "waiting_client"}, at=now))
        apply_marks(wo, self._policy, self._cfg.at_risk_fraction)
        s.add(Event(work_order_id=wo.id, actor="system", action="client_reply", detail=detail,
                    at=now))
        wo.updated_at = now
        return Outcome(item.raw.uid, "reply", work_order=wo.number)

    def _client_for(self, s: Session, addr: str) -> Client:
        key = client_key(addr)
        client = s.scalar(select(Client).where(Client.domain == key))
        if client is not None:
            return client
        try:
            # Another poller may create the same client at the same moment (PostgreSQL).
            with s.begin_nested():
                client = Client(domain=key, name=key, contract="standard",
                                created_at=self._clock())
                s.add(client)
                s.flush()
            return client
        except IntegrityError:
            found = s.scalar(select(Client).where(Client.domain == key))
            assert found is not None
            return found

    def _open(self, s: Session, item: Ingest, key: str, review_reason: str | None) -> Outcome:
        p, d, raw = item.parsed, item.decision, item.raw
        assert p is not None and d is not None
        now = self._clock()
        # The mailbox's arrival time starts the clock (mail that waited while we were down
        # is not younger than it is); a server clock ahead of ours is not trusted.
        received = min(raw.internal_date or now, now)
        client = self._client_for(s, p.from_addr)
        priority = d.priority or "normal"
        due = self._policy.due(d.label, priority, client.contract, received)
        wo = WorkOrder(client_id=client.id, **work_order_values(
            p, d, priority, client.contract, received, due, review_reason,
            self._cfg.review_threshold, now))
        apply_marks(wo, self._policy, self._cfg.at_risk_fraction)
        s.add(wo)
        s.flush()
        wo.number = format_number(wo.id)
        self._message_row(s, item, key, "work_order", None, wo_id=wo.id)
        s.add(Event(work_order_id=wo.id, actor="system", action="created",
                    detail={"type": d.label, "priority": priority,
                            "confidence": round(float(d.confidence), 4)}, at=now))
        acked, why_not = self._queue_ack(s, wo, p, due, now)
        if not acked:
            s.add(Event(work_order_id=wo.id, actor="system", action="ack_suppressed",
                        detail={"reason": why_not}, at=now))
        return Outcome(raw.uid, "work_order", work_order=wo.number, acked=acked,
                       request_type=wo.request_type, priority=wo.priority,
                       confidence=wo.confidence, needs_review=wo.needs_review)

    def _queue_ack(
        self, s: Session, wo: WorkOrder, p: ParsedEmail, due: DueDates, now: datetime
    ) -> tuple[bool, str]:
        if not p.from_addr:
            return False, "no sender address"
        if not p.from_trusted:
            return False, f"untrusted sender: {p.from_problem}"
        recent = s.scalar(
            select(func.count(Outbox.id)).where(
                Outbox.kind == "ack", Outbox.to_addr == p.from_addr,
                Outbox.created_at > now - timedelta(hours=1),
            )
        ) or 0
        if recent >= self._cfg.ack_rate_per_hour:
            log.info("ack rate limit reached for a sender (work order %s)", wo.number)
            return False, f"rate limit: {recent} acknowledgments to this sender in the last hour"
        in_reply_to, references = build_reply_headers(p)
        row = Outbox(
            work_order_id=wo.id, kind="ack", to_addr=p.from_addr,
            message_id=f"pending-{wo.number}-ack",
            template=f"ack/{wo.request_type}",
            context={
                "in_reply_to": in_reply_to,
                "references": list(references),
                "subject": clean_header(p.subject, 200),
            },
            status="pending", next_attempt_at=now, created_at=now,
        )
        s.add(row)
        s.flush()
        domain = _domain(self._cfg.from_address) or "itx.net"
        # Fixed per row (a resend is the same mail) but not guessable, so a stranger cannot
        # thread onto someone else's work order by quoting a predictable Message-ID.
        row.message_id = f"{wo.number}.ack.{row.id}.{secrets.token_hex(6)}@{domain}"
        return True, ""


# ---- the fast path -----------------------------------------------------------------------------
# Failures of the environment, not of a message: the batch is retried later, never quarantined.
_ENVIRONMENT = (OSError, OperationalError, InterfaceError)


class _Ref:
    """A row id that exists only once the bulk insert has run."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id: int | None = None

    def get(self) -> int:
        assert self.id is not None, "row not inserted yet"
        return self.id


def _rid(v: _Ref | int | None) -> int | None:
    return v.get() if isinstance(v, _Ref) else v


def _number_of(ref: _Ref) -> str:
    return format_number(ref.get())


class _FastBatch:
    """One batch decided in memory and written with bulk inserts; see the module docstring.

    Mirrors ``WorkOrderStore._store_one`` decision for decision."""

    def __init__(self, store: WorkOrderStore, s: Session, items: Sequence[Ingest],
                 figures: _SlaFigures) -> None:
        self.st, self.s, self.items, self.cfg = store, s, items, store._cfg
        self.figures = figures
        self.outcomes: list[Callable[[], Outcome]] = []
        self.logs: list[tuple[int, str, tuple[Any, ...]]] = []
        # Rows to write, in message order; ids of earlier tables resolved through _Ref.
        self.clients: dict[str, tuple[_Ref, str]] = {}  # key -> (ref, contract)
        self.work_orders: list[tuple[_Ref, _Ref | int, dict[str, Any]]] = []
        self.messages: list[tuple[_Ref, _Ref | int | None, dict[str, Any]]] = []
        self.raws: list[tuple[_Ref, bytes, bool]] = []
        self.attachments: list[tuple[_Ref, dict[str, Any]]] = []
        self.fetches: list[tuple[RawMessage, _Ref | int, bool, datetime]] = []
        self.events: list[tuple[_Ref | int | None, str, dict[str, Any], datetime]] = []
        self.acks: list[tuple[_Ref, _Ref, dict[str, Any]]] = []  # (outbox, work order, values)
        # What the batch adds, for the messages after it.
        self.batch_fetch: set[tuple[str, int, str]] = set()
        self.batch_keys: dict[str, _Ref] = {}
        self.batch_mids: set[str] = set()
        self.opened = 0
        self.live_lookups = 0

    # ---- lookups: one query per kind for the whole batch ------------------------------------
    def _prefetch(self) -> None:
        s, items = self.s, self.items
        ok = [i for i in items if i.parsed is not None and i.decision is not None
              and not i.error]
        self.already: set[tuple[str, int, str]] = set()
        boxes: dict[tuple[str, int], list[str]] = {}
        for i in items:
            boxes.setdefault((i.raw.mailbox, i.raw.uidvalidity), []).append(i.raw.uid)
        for (mb, uv), uids in boxes.items():
            for chunk in in_chunks(uids):
                self.already.update((mb, uv, u) for u in s.scalars(select(Fetch.uid).where(
                    Fetch.mailbox == mb, Fetch.uidvalidity == uv, Fetch.uid.in_(chunk))))
        self.known_keys: dict[str, int] = {}
        for chunk in in_chunks({dedupe_key(i.parsed, i.raw) for i in ok}):
            self.known_keys.update(s.execute(select(Message.dedupe_key, Message.id).where(
                Message.dedupe_key.in_(chunk))).all())
        parsed = [i.parsed for i in ok if i.parsed is not None]
        self.own: set[str] = set()
        for chunk in in_chunks({p.message_id for p in parsed if p.message_id}):
            self.own.update(s.scalars(select(Outbox.message_id).where(
                Outbox.message_id.in_(chunk))))
        refs = {r for p in parsed for r in (p.in_reply_to, *p.references) if r}
        self.outbox_thread: dict[str, int] = {}
        self.message_thread: dict[str, int] = {}
        for chunk in in_chunks(refs):
            for mid, wo_id in s.execute(select(Outbox.message_id, Outbox.work_order_id).where(
                    Outbox.message_id.in_(chunk), Outbox.work_order_id.is_not(None))):
                self.outbox_thread.setdefault(mid, wo_id)
            for mid, wo_id in s.execute(select(Message.message_id, Message.work_order_id).where(
                    Message.message_id.in_(chunk), Message.work_order_id.is_not(None))):
                self.message_thread.setdefault(mid, wo_id)
        tags = {m.group(1) for p in parsed if (m := TAG_RE.search(p.subject))}
        wo_ids = set(self.outbox_thread.values()) | set(self.message_thread.values())
        self.wos: dict[int, WorkOrder] = {}
        self.wo_numbers: dict[str, WorkOrder] = {}
        for chunk in in_chunks(wo_ids):
            for wo in s.scalars(select(WorkOrder).options(selectinload(WorkOrder.client))
                                .where(WorkOrder.id.in_(chunk))):
                self.wos[wo.id] = wo
        if tags:
            for wo in s.scalars(select(WorkOrder).options(selectinload(WorkOrder.client))
                                .where(WorkOrder.number.in_(list(tags)))):
                self.wos[wo.id] = wo
                if wo.number:
                    self.wo_numbers[wo.number] = wo
        self.known_clients: dict[str, tuple[int, str]] = {}
        for chunk in in_chunks({client_key(p.from_addr) for p in parsed}):
            for cid, domain, contract in s.execute(select(Client.id, Client.domain,
                                                          Client.contract)
                                                   .where(Client.domain.in_(chunk))):
                self.known_clients[domain] = (cid, contract)
        self.rates: dict[str, int] = {}
        hour_ago = self.st._clock() - timedelta(hours=1)
        for chunk in in_chunks({p.from_addr for p in parsed if p.from_addr}):
            self.rates.update(s.execute(
                select(Outbox.to_addr, func.count(Outbox.id))
                .where(Outbox.kind == "ack", Outbox.to_addr.in_(chunk),
                       Outbox.created_at > hour_ago)
                .group_by(Outbox.to_addr)).all())

    # ---- deciding ---------------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        self._prefetch()
        for item in self.items:
            self._one(item)
        self._write()
        for level, fmt, args in self.logs:
            log.log(level, fmt, *args)
        return [o() for o in self.outcomes]

    def _done(self, outcome: Outcome) -> None:
        self.outcomes.append(lambda: outcome)

    def _one(self, item: Ingest) -> None:
        raw, p = item.raw, item.parsed
        fk = (raw.mailbox, raw.uidvalidity, raw.uid)
        if fk in self.already or fk in self.batch_fetch:
            self._done(Outcome(raw.uid, "already"))
            return
        if item.error or p is None or item.decision is None:
            self._quarantine(item)
            return
        key = dedupe_key(p, raw)
        earlier: _Ref | int | None = self.known_keys.get(key) or self.batch_keys.get(key)
        if earlier is not None:
            self._fetch(raw, earlier, dup=True)
            self._done(Outcome(raw.uid, "duplicate", reason="same Message-ID already stored"))
            return
        decision = item.decision
        if p.from_addr == self.cfg.from_address or (p.message_id and p.message_id in self.own):
            self._non_request(item, key, "own")
            return
        if not decision.is_request and (decision.non_request_kind in HEADER_SCREENED):
            self._non_request(item, key, decision.non_request_kind or "auto_reply")
            return
        wo, trusted_reason = self._find_thread(p)
        if wo is not None and trusted_reason is None:
            self._reply(item, key, wo)
            return
        if not decision.is_request:
            self._non_request(item, key, decision.non_request_kind or "other")
            return
        try:
            self._open(item, key, trusted_reason)
        except _ENVIRONMENT:
            raise
        except Exception as e:  # as the careful path: this message only is quarantined
            self.logs.append((logging.ERROR, "storing uid=%s failed (%s); quarantining",
                              (raw.uid, type(e).__name__)))
            self._quarantine(Ingest(raw=raw, error=f"store failed: {type(e).__name__}"))

    def _find_thread(self, p: ParsedEmail) -> tuple[WorkOrder | None, str | None]:
        """``WorkOrderStore._find_thread`` from the prefetched maps. A message that may
        answer one of this batch's own messages is looked up the careful way instead, after
        the rows planned so far are written (the lookups then see them, as they would)."""
        ids = [i for i in (p.in_reply_to, *p.references) if i]
        m = TAG_RE.search(p.subject)
        if any(i in self.batch_mids for i in ids) or (
                m and m.group(1) not in self.wo_numbers and self.opened):
            self._write()
            self.live_lookups += 1
            return self.st._find_thread(self.s, p)
        wo: WorkOrder | None = None
        wo_id = next((self.outbox_thread[i] for i in ids if i in self.outbox_thread), None)
        if wo_id is None:
            wo_id = next((self.message_thread[i] for i in ids if i in self.message_thread), None)
        if wo_id is not None:
            wo = self.wos.get(wo_id)
        if wo is None and m:
            wo = self.wo_numbers.get(m.group(1))
        if wo is None:
            return None, None
        return wo, thread_distrust(p, wo)

    # ---- planned rows -----------------------------------------------------------------------
    def _fetch(self, raw: RawMessage, message: _Ref | int, dup: bool = False) -> None:
        self.fetches.append((raw, message, dup, self.st._clock()))
        self.batch_fetch.add((raw.mailbox, raw.uidvalidity, raw.uid))

    def _message(self, item: Ingest, key: str, disposition: str, reason: str | None,
                 wo: _Ref | int | None = None) -> tuple[_Ref, dict[str, Any]]:
        """``WorkOrderStore._message_row`` as planned rows."""
        raw, p = item.raw, item.parsed
        now = self.st._clock()
        values = message_values(item, key, disposition, reason, now)
        ref = _Ref()
        self.messages.append((ref, wo, values))
        data = raw.data if raw.data is not None else raw.head
        self.raws.append((ref, data, raw.data is None))
        if p is not None:
            for att in p.attachments:
                path = self.st._save_attachment(att.sha256, att.payload)
                self.attachments.append((ref, dict(
                    filename=att.filename, content_type=att.content_type, size=att.size,
                    sha256=att.sha256, path=str(path))))
        self._fetch(raw, ref)
        self.batch_keys[key] = ref
        if p is not None and p.message_id:
            self.batch_mids.add(p.message_id)
        return ref, values

    def _quarantine(self, item: Ingest) -> None:
        reason = item.error or "no decision"
        raw = item.raw
        key = f"fetch:{raw.mailbox}:{raw.uidvalidity}:{raw.uid}"[:1024]
        _, values = self._message(Ingest(raw=raw), key, "quarantined", reason)
        if item.parsed is not None:
            values["subject"], values["from_addr"] = item.parsed.subject, item.parsed.from_addr
        self.logs.append((logging.WARNING, "quarantined uid=%s: %s", (raw.uid, reason)))
        self._done(Outcome(raw.uid, "quarantined", reason=reason))

    def _non_request(self, item: Ingest, key: str, kind: str) -> None:
        _, values = self._message(item, key, "non_request", kind)
        self._done(Outcome(item.raw.uid, "non_request", reason=kind,
                           screened_by=values["screened_by"]))

    def _reply(self, item: Ingest, key: str, wo: WorkOrder) -> None:
        """``WorkOrderStore._reply``: an existing work order, changed through the ORM."""
        assert item.decision is not None
        now = self.st._clock()
        self._message(item, key, "reply", None, wo=wo.id)
        detail: dict[str, Any] = {"from": item.parsed.from_addr if item.parsed else ""}
        if wo.status == "resolved" and item.decision.is_request:
            wo.status, wo.resolved_at = "open", None
            self.events.append((wo.id, "reopened", detail, now))
        elif wo.status == "waiting_client":
            end_pause(wo, now)
            wo.status = "open"
            self.events.append((wo.id, "status",
                                {**detail, "status": "open", "was": "waiting_client"}, now))
        apply_marks(wo, self.st._policy, self.cfg.at_risk_fraction)
        self.events.append((wo.id, "client_reply", detail, now))
        wo.updated_at = now
        self._done(Outcome(item.raw.uid, "reply", work_order=wo.number))

    def _open(self, item: Ingest, key: str, review_reason: str | None) -> None:
        """``WorkOrderStore._open`` + ``_queue_ack``. Raises before planning any row."""
        p, d, raw = item.parsed, item.decision, item.raw
        assert p is not None and d is not None
        now = self.st._clock()
        received = min(raw.internal_date or now, now)
        ckey = client_key(p.from_addr)
        known = self.known_clients.get(ckey)
        planned = self.clients.get(ckey)
        client: _Ref | int
        if known is not None:
            client, contract = known
        elif planned is not None:
            client, contract = planned
        else:
            client, contract = _Ref(), "standard"
        priority = d.priority or "normal"
        due, next_due, at_risk_at = self.figures.get(d.label, priority, contract, received)
        values = work_order_values(p, d, priority, contract, received, due, review_reason,
                                   self.cfg.review_threshold, now)
        # Core inserts read every column: the ORM defaults are not applied.
        values.update(first_response_at=None, resolved_at=None, assignee_id=None,
                      promised_at=None, called_back_at=None, next_due=next_due,
                      at_risk_at=at_risk_at)
        ack: dict[str, Any] | None = None
        why_not = ""
        if not p.from_addr:
            why_not = "no sender address"
        elif not p.from_trusted:
            why_not = f"untrusted sender: {p.from_problem}"
        else:
            recent = self.rates.get(p.from_addr, 0)
            if recent >= self.cfg.ack_rate_per_hour:
                why_not = f"rate limit: {recent} acknowledgments to this sender in the last hour"
            else:
                in_reply_to, references = build_reply_headers(p)
                ack = dict(kind="ack", to_addr=p.from_addr,
                           context={"in_reply_to": in_reply_to, "references": list(references),
                                    "subject": clean_header(p.subject, 200)},
                           status="pending", attempts=0, next_attempt_at=now,
                           claimed_until=None, last_error=None, smtp_response=None,
                           sent_at=None, created_at=now, template=f"ack/{d.label}")
        # Nothing above writes; from here on the message is planned.
        if isinstance(client, _Ref) and planned is None:
            self.clients[ckey] = (client, contract)
        wo = _Ref()
        self.work_orders.append((wo, client, values))
        self.opened += 1
        self._message(item, key, "work_order", None, wo=wo)
        self.events.append((wo, "created", {"type": d.label, "priority": priority,
                                            "confidence": round(float(d.confidence), 4)}, now))
        if ack is not None:
            self.rates[p.from_addr] = self.rates.get(p.from_addr, 0) + 1
            self.acks.append((_Ref(), wo, ack))
        else:
            if why_not.startswith("rate limit"):
                self.logs.append((logging.INFO, "ack rate limit reached for a sender "
                                  "(work order %s)", (_LazyNumber(wo),)))
            self.events.append((wo, "ack_suppressed", {"reason": why_not}, now))
        acked = ack is not None
        uid, review = raw.uid, bool(values["needs_review"])
        conf = float(d.confidence)
        self.outcomes.append(lambda: Outcome(
            uid, "work_order", work_order=_number_of(wo), acked=acked, request_type=d.label,
            priority=priority, confidence=conf, needs_review=review))

    # ---- writing ----------------------------------------------------------------------------
    def _write(self) -> None:
        # Core statements on the session's connection (the ORM's execute layer is only
        # overhead for them); ORM changes (replies) are flushed at the end.
        s = self.s
        c = s.connection()
        if self.clients:
            t = Client.__table__
            refs = list(self.clients.items())
            now = self.st._clock()
            ids = c.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
                {"domain": k, "name": k, "contract": contract, "created_at": now}
                for k, (_, contract) in refs]).scalars().all()
            for (key, (ref, contract)), i in zip(refs, ids, strict=True):
                ref.id = i
                self.known_clients[key] = (i, contract)
        if self.work_orders:
            t = WorkOrder.__table__
            ids = c.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
                {**v, "client_id": _rid(c), "number": None} for _, c, v in self.work_orders
            ]).scalars().all()
            for (ref, _, _), i in zip(self.work_orders, ids, strict=True):
                ref.id = i
            c.execute(update(t).where(t.c.id == bindparam("wo_id"))
                      .values(number=bindparam("wo_number")),
                      [{"wo_id": i, "wo_number": format_number(i)} for i in ids])
        if self.messages:
            t = Message.__table__
            ids = c.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
                {**v, "work_order_id": _rid(wo)} for _, wo, v in self.messages
            ]).scalars().all()
            for (ref, _, _), i in zip(self.messages, ids, strict=True):
                ref.id = i
            c.execute(insert(RawBlob.__table__), [
                {"message_pk": r.get(), "data": data, "truncated": trunc}
                for r, data, trunc in self.raws])
        if self.attachments:
            c.execute(insert(AttachmentRow.__table__),
                      [{**v, "message_pk": r.get()} for r, v in self.attachments])
        if self.fetches:
            c.execute(insert(Fetch.__table__), [
                {"mailbox": raw.mailbox, "uidvalidity": raw.uidvalidity, "uid": raw.uid,
                 "message_pk": _rid(m), "duplicate": dup, "fetched_at": at}
                for raw, m, dup, at in self.fetches])
        if self.acks:
            t = Outbox.__table__
            ids = c.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
                {**v, "work_order_id": wo.get(), "message_id": f"pending-{_number_of(wo)}-ack"}
                for _, wo, v in self.acks]).scalars().all()
            domain = _domain(self.cfg.from_address) or "itx.net"
            for (ref, _, _), i in zip(self.acks, ids, strict=True):
                ref.id = i
            # Fixed per row, not guessable: see WorkOrderStore._queue_ack.
            c.execute(update(t).where(t.c.id == bindparam("ob_id"))
                      .values(message_id=bindparam("ob_mid")),
                      [{"ob_id": ref.get(),
                        "ob_mid": f"{_number_of(wo)}.ack.{ref.get()}.{secrets.token_hex(6)}"
                                  f"@{domain}"}
                       for ref, wo, _ in self.acks])
        if self.events:
            c.execute(insert(Event.__table__), [
                {"work_order_id": _rid(wo), "actor": "system", "action": action,
                 "detail": detail, "at": at} for wo, action, detail, at in self.events])
        s.flush()  # replies changed work orders through the ORM
        self.clients, self.work_orders, self.messages, self.raws = {}, [], [], []
        self.attachments, self.fetches, self.events, self.acks = [], [], [], []


class _LazyNumber:
    """A work-order number for a log line written after the insert gave it an id."""

    def __init__(self, ref: _Ref) -> None:
        self.ref = ref

    def __str__(self) -> str:
        return _number_of(self.ref)


_WO_COLUMNS = tuple(c.key for c in WorkOrder.__table__.columns)


class _SlaFigures:
    """Due dates and queue marks of a new work order, which depend only on its type,
    priority, contract and arrival: worked out once per combination."""

    def __init__(self, policy: SlaPolicy, at_risk_fraction: float) -> None:
        self.policy, self.at_risk_fraction = policy, at_risk_fraction
        self._known: dict[tuple[str, str, str, datetime],
                          tuple[DueDates, datetime | None, datetime | None]] = {}

    def get(self, label: str, priority: str, contract: str, received: datetime
            ) -> tuple[DueDates, datetime | None, datetime | None]:
        key = (label, priority, contract, received)
        known = self._known.get(key)
        if known is None:
            due = self.policy.due(label, priority, contract, received)
            # What a new row holds, for the marks (a transient ORM object would cost more).
            view = _MarksView(dict(
                status="new", pauses=[], contract=contract, priority=priority,
                request_type=label, received_at=received, **due_columns(due)))
            apply_marks(view, self.policy, self.at_risk_fraction)  # type: ignore[arg-type]
            known = self._known[key] = (due, view.next_due, view.at_risk_at)
        return known


class _MarksView:
    """The fields ``triage.slamarks.marks`` reads, over a planned work order's values."""

    def __init__(self, values: dict[str, Any]) -> None:
        # Every column, None unless planned: a column added later reads as on a new row.
        self.__dict__.update(dict.fromkeys(_WO_COLUMNS))
        self.__dict__.update(values)
