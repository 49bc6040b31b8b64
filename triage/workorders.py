"""Store a batch of fetched messages: dedupe, thread, open work orders with their SLA due
dates and queue acknowledgments, all in one transaction per batch (a savepoint per message,
so one bad message becomes a quarantine record instead of rolling back its neighbours).

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

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Decision
from triage.messages import DueDates, ParsedEmail, RawMessage
from triage.parse import build_reply_headers, clean_header
from triage.sla import SlaPolicy
from triage.slamarks import apply_marks, end_pause
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


@dataclass(frozen=True)
class StoreConfig:
    from_address: str
    ack_rate_per_hour: int
    attachments_dir: Path
    review_threshold: float
    mailbox_state: bool = True
    at_risk_fraction: float = 0.75  # for the queue's SLA marks (triage.slamarks)


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

    # ---- reading ---------------------------------------------------------------------------
    def stored_uids(self, mailbox: str, uidvalidity: int, uids: Sequence[str]) -> set[str]:
        """UIDs of this batch already stored: after a crash before ``mark_done`` they come back."""
        if not uids:
            return set()
        with self._reads() as s:
            rows = s.scalars(
                select(Fetch.uid).where(
                    Fetch.mailbox == mailbox,
                    Fetch.uidvalidity == uidvalidity,
                    Fetch.uid.in_(list(uids)),
                )
            )
            return set(rows)

    # ---- writing ---------------------------------------------------------------------------
    def store_batch(self, items: Sequence[Ingest]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        with self._sessions.begin() as s:
            for item in items:
                outcomes.append(self._store_one_guarded(s, item))
            if self._cfg.mailbox_state and items:
                self._checkpoint(s, items)
        return outcomes

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
        head = p is None
        row = Message(
            direction="in",
            dedupe_key=key,
            message_id=None if head else p.message_id,  # type: ignore[union-attr]
            content_hash=(p.content_hash if p else ""),
            size=raw.size,
            from_addr="" if p is None else p.from_addr,
            from_name="" if p is None else p.from_name,
            subject="" if p is None else p.subject,
            in_reply_to=None if p is None else p.in_reply_to,
            references=[] if p is None else list(p.references),
            headers=[] if p is None else [list(h) for h in p.headers],
            body_text="" if p is None else p.text,
            body_html=None if p is None else p.html,
            defects=[] if p is None else list(p.defects),
            received_at=raw.internal_date or self._clock(),
            disposition=disposition,
            reason=reason,
            work_order_id=wo_id,
            created_at=self._clock(),
        )
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
        self._message_row(s, item, key, "non_request", kind)
        return Outcome(item.raw.uid, "non_request", reason=kind)

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
        # Headers and tags can both be forged: only the requester or the same client may
        # add to (and reopen) a work order; anyone else opens their own, flagged for review.
        if p.from_addr == wo.requester or client_key(p.from_addr) == wo.client.domain:
            return wo, None
        return wo, f"refers to {wo.number} of another client; opened separately"

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
        reasons = [r for r in (review_reason,) if r]
        if d.needs_review or d.confidence < self._cfg.review_threshold:
            reasons.append(f"low confidence {d.confidence:.2f}")
        if not p.from_addr:
            reasons.append("no usable sender address")
        wo = WorkOrder(
            client_id=client.id, requester=p.from_addr, requester_name=p.from_name,
            subject=clean_header(p.subject, 500), request_type=d.label,
            confidence=float(d.confidence), priority=priority, status="new",
            needs_review=bool(reasons), review_reason="; ".join(reasons) or None,
            classifier_version=d.model_version,
            evidence=[{"source": e.source, "text": e.text, "weight": e.weight}
                      for e in d.evidence],
            cues=list(d.cues), contract=client.contract, received_at=received,
            clock_start=due.clock_start, response_due=due.response_due,
            callback_due=due.callback_due, fulfil_due=due.fulfil_due,
            milestones=[{"name": n, "due": t.isoformat()} for n, t in due.milestones],
            root_message_id=p.message_id, created_at=now, updated_at=now, pauses=[],
        )
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
