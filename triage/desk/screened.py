"""Screened mail for staff: every non-request and every quarantined message, and the two ways
out of the list, "open as work order" and "reprocess".

A message screened out by mistake is a request nobody answers, so nothing screened may be
invisible: the list shows why each message was screened (the header that decided, or the
text model's confidence and words) and any of them can be opened as a work order with the
due dates it would have had, counted from its original arrival. Quarantined mail (a parse or
store failure) can also be run through the daemon's own ingestion again once the fault is
fixed.

Both actions are idempotent, so a double click or a retried API call does the work once:
- open: the message row is locked and must still be screened; once opened it belongs to the
  work order (disposition ``work_order``), and a second call answers with that work order.
- reprocess: the raw bytes go to the ingestor under a fetch key of their own,
  (``reprocess``, 0, ``q<message id>``). The store records fetch keys once (primary key),
  so a second run, or a run after a crash between storing and marking, finds the key and
  stores nothing; the quarantine record is then marked ``reprocessed`` with what the message
  became. The quarantine record and its raw bytes stay, and its mailbox fetch row still
  points to it, so the message is never lost and never lives twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, selectinload, sessionmaker

from classifiers.types import NON_REQUEST_KINDS, Decision
from triage.desk.actions import ActionError, NotFound
from triage.messages import ParsedEmail, RawMessage
from triage.screening import CLOSING, MODEL, SCREENED_BY
from triage.sla import SlaPolicy
from triage.storage.models import Correction, Event, Fetch, Message, WorkOrder
from triage.store.store import Opened as StoreOpened
from triage.workorders import Outcome, WorkOrderStore

log = logging.getLogger(__name__)

PAGE_SIZE = 50
QUARANTINED, REPROCESSED, NON_REQUEST = "quarantined", "reprocessed", "non_request"
SCREENED_DISPOSITIONS = (NON_REQUEST, QUARANTINED)
# Kinds to filter on: the non-request kinds (the store files unknown ones as "other"),
# quarantined mail, and quarantine records already reprocessed (not listed by default).
KIND_FILTERS: tuple[str, ...] = (*NON_REQUEST_KINDS, "other", QUARANTINED, REPROCESSED)
# The navigation counts what may hide a request and is recent enough to matter: screened by
# the text model, or quarantined, in the last week. Header-proven automation (auto-replies,
# bounces, list mail) and our own mail are certain by design and would drown the count.
AWAITING_WINDOW = timedelta(days=7)
REPROCESS_MAILBOX = "reprocess"


@dataclass(frozen=True)
class ScreenedFilter:
    kind: str | None = None
    by: str | None = None  # header | model | store
    page: int = 1
    page_size: int = PAGE_SIZE

    def query_args(self, **change: Any) -> dict[str, str]:
        values: dict[str, Any] = {"kind": self.kind, "by": self.by}
        values.update(change)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


@dataclass(frozen=True)
class ScreenedRow:
    id: int
    received_at: datetime
    from_addr: str
    from_name: str
    subject: str
    kind: str
    by: str | None
    reason: str  # the deciding header, the model's confidence and words, or the fault
    disposition: str


@dataclass(frozen=True)
class ScreenedPage:
    rows: list[ScreenedRow]
    total: int
    page: int
    pages: int
    counts: dict[str, int]  # per kind, over everything listed by default
    awaiting: int


@dataclass(frozen=True)
class Opened:
    number: str
    created: bool  # False: it had been opened already (the call was repeated)
    acked: bool


@dataclass(frozen=True)
class Reprocessed:
    outcome: str  # what it became: work_order | reply | non_request | quarantined | duplicate
    message_id: int | None  # the row it is now
    work_order: str | None
    repeated: bool = False  # it had been reprocessed already


# ---- reading ----------------------------------------------------------------------------------
def kind_of(disposition: str, reason: str | None) -> str:
    if disposition in (QUARANTINED, REPROCESSED):
        return disposition
    return reason or "other"


def reason_text(disposition: str, reason: str | None, screening: dict[str, Any] | None) -> str:
    """One line for the list: why this message opened no work order."""
    if disposition in (QUARANTINED, REPROCESSED):
        return reason or "quarantined"
    sc = screening or {}
    by = sc.get("by")
    if by == "header":
        return f"header {sc.get('header') or '(not recorded)'}"
    if by == MODEL:
        words = [e["text"] for e in sc.get("evidence", ())
                 if isinstance(e, dict) and e.get("text")][:4]
        text = f"text model {float(sc.get('confidence', 0)) * 100:.0f} %"
        return text + (": " + ", ".join(words) if words else "")
    if by == "store":
        return str(sc.get("why") or "our own mail")
    if by == CLOSING:
        words = [e["text"] for e in sc.get("evidence", ())
                 if isinstance(e, dict) and e.get("text")][:1]
        return "closing note" + (f": {words[0]}" if words else "")
    return reason or ""


def _where(f: ScreenedFilter) -> list[ColumnElement[bool]]:
    if f.kind == QUARANTINED:
        where = [Message.disposition == QUARANTINED]
    elif f.kind == REPROCESSED:
        where = [Message.disposition == REPROCESSED]
    elif f.kind:
        where = [Message.disposition == NON_REQUEST, Message.reason == f.kind]
    else:
        where = [Message.disposition.in_(SCREENED_DISPOSITIONS)]
    if f.by:
        where.append(Message.screened_by == f.by)
    return where


def awaiting_count(s: Session, now: datetime) -> int:
    """Screened by the text model or quarantined, in the last ``AWAITING_WINDOW``."""
    since = now - AWAITING_WINDOW
    return int(s.scalar(select(func.count()).select_from(Message).where(
        or_(and_(Message.disposition == NON_REQUEST, Message.screened_by == MODEL),
            Message.disposition == QUARANTINED),
        Message.received_at >= since)) or 0)


def screened_page(s: Session, f: ScreenedFilter, now: datetime) -> ScreenedPage:
    total = int(s.scalar(select(func.count()).select_from(Message).where(*_where(f))) or 0)
    pages = max(1, -(-total // f.page_size))
    page = min(max(1, f.page), pages)
    cols = (Message.id, Message.received_at, Message.from_addr, Message.from_name,
            Message.subject, Message.disposition, Message.reason, Message.screened_by,
            Message.screening)
    rows = []
    for r in s.execute(select(*cols).where(*_where(f))
                       .order_by(Message.received_at.desc(), Message.id.desc())
                       .offset((page - 1) * f.page_size).limit(f.page_size)):
        rows.append(ScreenedRow(r.id, r.received_at, r.from_addr, r.from_name, r.subject,
                                kind_of(r.disposition, r.reason), r.screened_by,
                                reason_text(r.disposition, r.reason, r.screening),
                                r.disposition))
    counts: dict[str, int] = {}
    for disposition, reason, n in s.execute(
            select(Message.disposition, Message.reason, func.count())
            .where(Message.disposition.in_(SCREENED_DISPOSITIONS))
            .group_by(Message.disposition, Message.reason)):
        key = QUARANTINED if disposition == QUARANTINED else (reason or "other")
        counts[key] = counts.get(key, 0) + int(n)
    return ScreenedPage(rows, total, page, pages, dict(sorted(counts.items())),
                        awaiting_count(s, now))


def screened_message(s: Session, message_pk: int) -> Message | None:
    """A screened (or once screened) inbound message with its raw bytes and attachments."""
    return s.scalar(select(Message).where(Message.id == message_pk, Message.direction == "in")
                    .options(selectinload(Message.attachments), selectinload(Message.raw)))


def default_request_type(m: Message, policy: SlaPolicy) -> str:
    """The text model's best request type for the message, or ``other``."""
    best = (m.screening or {}).get("best_request")
    return best if isinstance(best, str) and best in policy.types else "other"


# ---- acting -----------------------------------------------------------------------------------
class Screening:
    """The two actions; the pages and the API both call these."""

    def __init__(self, sessions: sessionmaker[Session], policy: SlaPolicy,
                 store: WorkOrderStore, clock: Callable[[], datetime], *,
                 reprocess: Callable[[list[RawMessage]], list[Outcome]] | None = None,
                 on_ack_refused: Callable[[str], None] | None = None) -> None:
        """``store``: the daemon's work-order store (its client, acknowledgment and rate
        rules). ``reprocess``: the daemon's ingestor (``Ingestor.store``), which parses,
        classifies and stores as for fetched mail; None where there is none.
        ``on_ack_refused``: told the reason code of each acknowledgment these actions
        withheld, once committed (the daemon's metric, as for fetched mail)."""
        self._sessions = sessions
        self._policy = policy
        self._store = store
        self._clock = clock
        self._reprocess = reprocess
        self._reprocess_lock = threading.Lock()
        self._on_ack_refused = on_ack_refused

    def open_as_work_order(self, message_pk: int, actor: str, request_type: str | None = None,
                           priority: str | None = None) -> Opened:
        now = self._clock()
        with self._sessions.begin() as s:
            m = s.scalar(select(Message).where(Message.id == message_pk,
                                               Message.direction == "in").with_for_update())
            if m is None:
                raise NotFound(str(message_pk))
            if m.disposition == "work_order" and m.work_order_id is not None:
                number = s.scalar(select(WorkOrder.number)
                                  .where(WorkOrder.id == m.work_order_id))
                assert number is not None
                return Opened(number, created=False, acked=False)
            if m.disposition not in SCREENED_DISPOSITIONS:
                raise ActionError(f"this message is a {m.disposition.replace('_', ' ')}, not "
                                  "a screened one")
            rtype = request_type or default_request_type(m, self._policy)
            if rtype not in self._policy.types:
                raise ActionError(f"unknown request type {rtype!r}")
            prio = priority or self._policy.default_priority(rtype)
            if prio not in self._policy.priorities:
                raise ActionError(f"unknown priority {prio!r}")
            was, by = kind_of(m.disposition, m.reason), m.screened_by
            wo, opened = open_from_stored(s, self._store, m, rtype, prio, actor, now)
            if m.disposition == NON_REQUEST:
                # Training data: the text (exported with the work order's opening message)
                # is a request of this type. Quarantined mail was never classified.
                s.add(Correction(work_order_id=wo.id, actor=actor, old_type="not_a_request",
                                 new_type=rtype, old_priority="", new_priority=prio, at=now))
            m.disposition, m.work_order_id = "work_order", wo.id
            m.screening = {**(m.screening or {}),
                           "opened": {"by": actor, "at": now.astimezone(UTC).isoformat(),
                                      "work_order": wo.number, "was": was}}
            s.add(Event(work_order_id=wo.id, actor=actor, action="opened_from_screened",
                        detail={"message": m.id, "was": was, "screened_by": by,
                                "type": rtype, "priority": prio}, at=now))
            assert wo.number is not None
            number = wo.number
        log.info("screened message %s opened as %s by %s", message_pk, number, actor,
                 extra={"event": "opened_from_screened", "work_order": number})
        self._refused(opened.ack_refused)
        return Opened(number, created=True, acked=opened.acked)

    def _refused(self, reason: str | None) -> None:
        if reason is not None and self._on_ack_refused is not None:
            self._on_ack_refused(reason)

    def reprocess(self, message_pk: int, actor: str) -> Reprocessed:
        if self._reprocess is None:
            raise ActionError("reprocessing needs the daemon's ingestion, which this process "
                              "does not run")
        uid = f"q{message_pk}"
        with self._reprocess_lock:  # one at a time here; the fetch key guards across processes
            with self._sessions() as s:
                m = screened_message(s, message_pk)
                if m is None:
                    raise NotFound(str(message_pk))
                if m.disposition == REPROCESSED:
                    return _recorded(m)
                if m.disposition != QUARANTINED:
                    raise ActionError("only quarantined mail can be reprocessed")
                raw = m.raw
                if raw is None or raw.truncated:
                    raise ActionError("only the head of this message was kept (it was over "
                                      "the size limit); it is still on the mail server")
                data, received = raw.data, m.received_at
            failure: Exception | None = None
            outcome: Outcome | None = None
            try:
                outcome = self._reprocess([RawMessage(REPROCESS_MAILBOX, 0, uid, len(data), data,
                                                      internal_date=received)])[0]
            except Exception as e:  # told to staff below, unless the store committed anyway
                failure = e
                log.warning("reprocessing message %s failed (%s)", message_pk,
                            type(e).__name__)
            now = self._clock()
            with self._sessions.begin() as s:
                m = s.scalar(select(Message).where(Message.id == message_pk).with_for_update())
                assert m is not None
                if m.disposition == REPROCESSED:  # another request finished first
                    return _recorded(m)
                fetch = s.get(Fetch, (REPROCESS_MAILBOX, 0, uid))
                if fetch is None:
                    why = type(failure).__name__ if failure else "nothing was stored"
                    raise ActionError(f"reprocessing failed ({why}); the message stays "
                                      "quarantined, try again later")
                new = s.get(Message, fetch.message_pk)
                assert new is not None
                became = ("duplicate" if fetch.duplicate else
                          outcome.disposition if outcome is not None
                          and outcome.disposition not in ("already", "duplicate")
                          else new.disposition)
                number = (s.scalar(select(WorkOrder.number)
                                   .where(WorkOrder.id == new.work_order_id))
                          if new.work_order_id is not None else None)
                m.disposition = REPROCESSED
                m.screening = {**(m.screening or {}), "reprocessed": {
                    "by": actor, "at": now.astimezone(UTC).isoformat(), "outcome": became,
                    "message": new.id, "work_order": number}}
                s.add(Event(work_order_id=new.work_order_id, actor=actor, action="reprocessed",
                            detail={"message": m.id, "now_message": new.id, "outcome": became,
                                    "quarantine_reason": m.reason}, at=now))
        log.info("quarantined message %s reprocessed by %s: %s", message_pk, actor, became,
                 extra={"event": "reprocessed", "work_order": number})
        if outcome is not None:
            self._refused(outcome.ack_refused)
        return Reprocessed(became, new.id, number)


def _recorded(m: Message) -> Reprocessed:
    r = (m.screening or {}).get("reprocessed", {})
    return Reprocessed(str(r.get("outcome", "")), r.get("message"), r.get("work_order"),
                       repeated=True)


def parsed_of(m: Message) -> ParsedEmail:
    """The stored message as the store's rules read it (what parse() gave when it came in;
    a quarantined message keeps only what the quarantine recorded: sender and subject)."""
    return ParsedEmail(
        message_id=m.message_id, subject=m.subject, from_addr=m.from_addr,
        from_name=m.from_name, to=(), date=None, in_reply_to=m.in_reply_to,
        references=tuple(m.references or ()),
        headers=tuple((str(k), str(v)) for k, v in (m.headers or ())),
        text=m.body_text, html=m.body_html, attachments=(), defects=tuple(m.defects or ()),
        content_hash=m.content_hash)


def open_from_stored(s: Session, store: WorkOrderStore, m: Message,
                     request_type: str, priority: str, actor: str, now: datetime
                     ) -> tuple[WorkOrder, StoreOpened]:
    """A work order for a stored message, by the rules the store opens one for fresh mail
    (``WorkOrderStore.open_work_order``): its client and contract, due dates from the
    ORIGINAL arrival, the acknowledgment through the outbox under the same limits."""
    p = parsed_of(m)
    d = Decision(label=request_type, confidence=1.0, priority=priority, needs_review=False,
                 model_version=str((m.screening or {}).get("model_version") or ""))
    opened = store.open_work_order(s, p, d, min(m.received_at, now), actor=actor,
                                   detail={"from_screened": m.id}, now=now)
    wo = s.get(WorkOrder, opened.work_order_id)
    assert wo is not None
    return wo, opened


def headers_of(m: Message) -> Sequence[tuple[str, str]]:
    return [(str(k), str(v)) for k, v in (m.headers or ())]


__all__ = ["AWAITING_WINDOW", "KIND_FILTERS", "PAGE_SIZE", "REPROCESS_MAILBOX", "SCREENED_BY",
           "Opened", "Reprocessed", "ScreenedFilter", "ScreenedPage", "ScreenedRow",
           "Screening", "awaiting_count", "default_request_type", "headers_of", "kind_of",
           "open_from_stored", "parsed_of", "reason_text", "screened_message", "screened_page"]
