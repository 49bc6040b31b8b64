"""Reading for staff: the queue (filtered, sorted by the nearest due time, paginated, with
counts per request type) and one work order with its thread and audit trail.

The SLA state filter is SQL over the stored marks (``triage.slamarks``): with 100,000 work
orders nothing may be computed per row before the page is cut. The live clock shown on a row
is computed for the rows of the page only, from the same clocks the SLA watch measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVarTuple

from markupsafe import Markup
from sqlalchemy import Select, and_, case, func, literal, or_, select
from sqlalchemy.orm import Session, joinedload, selectinload

from triage.desk.thread import (
    OURS,
    Entry,
    client_has_last_word,
    in_order,
    message_entry,
    outbox_entry,
)
from triage.sla import ClockState, SlaPolicy, close_pauses, moved_due
from triage.slamarks import (
    AT_RISK,
    BREACHED,
    ON_TRACK,
    PAUSED,
    clocks,
    contract_calendar,
    measure,
    pauses_of,
    sla_state,
)
from triage.slamarks import Clock as SlaClock
from triage.storage.models import (
    AttachmentRow,
    Client,
    Correction,
    Event,
    Message,
    Outbox,
    User,
    WorkOrder,
)
from triage.store.model import UNKNOWN_CLIENT

PAGE_SIZE = 50
ACTIVE = "active"  # every status but resolved
STATUS_FILTERS = (ACTIVE, "new", "open", "waiting_client", "resolved", "all")
SLA_FILTERS = (ON_TRACK, AT_RISK, BREACHED, PAUSED)
# Rendered into the SQL, not bound: the planners (SQLite always, PostgreSQL on a generic plan)
# match a partial index only on the literal of its WHERE, here that of migration 0004's
# indexes over the active work orders (``status <> 'resolved'``).
_RESOLVED = literal("resolved", literal_execute=True)
# A work order is numbered in the transaction that opens it. Tested through coalesce so that
# no planner reads ``number IS NOT NULL`` as a range of the unique index on number: SQLite
# (no statistics) did, for every total, and so visited all 100,000 rows.
_NUMBERED = func.coalesce(WorkOrder.number, None).is_not(None)


@dataclass(frozen=True)
class QueueFilter:
    request_type: str | None = None
    priority: str | None = None
    status: str = ACTIVE
    assignee: str | None = None  # a user name, or "none" for unassigned
    needs_review: bool | None = None
    sla: str | None = None
    q: str | None = None  # a work-order number, or words (full-text: triage.desk.search)
    page: int = 1
    page_size: int = PAGE_SIZE

    def query_args(self, **change: Any) -> dict[str, str]:
        """The filter as query-string arguments (for links that keep it), page reset to 1."""
        values = {"type": self.request_type, "priority": self.priority,
                  "status": self.status if self.status != ACTIVE else None,
                  "assignee": self.assignee,
                  "review": None if self.needs_review is None else (
                      "yes" if self.needs_review else "no"),
                  "sla": self.sla, "q": self.q}
        values.update(change)
        return {k: str(v) for k, v in values.items() if v not in (None, "")}


@dataclass(frozen=True)
class Clock:
    target: str
    state: ClockState


@dataclass(frozen=True)
class QueueRow:
    wo: WorkOrder
    client_name: str  # see client_label
    assignee: str | None
    sla: str
    clock: Clock | None  # the open clock with the nearest due, measured now
    client_replied: bool = False  # the client wrote after the last staff reply


@dataclass(frozen=True)
class QueueCounts:
    by_type: dict[str, int]
    needs_review: int
    at_risk: int
    breached: int
    active: int


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    total: int
    page: int
    pages: int
    counts: QueueCounts
    snippets: dict[int, Markup] = field(default_factory=dict)  # work order id -> highlights
    ranked: bool = False  # a search by words: best match first, not nearest due
    capped: int = 0  # a search whose matches were cut to the newest N messages (N)


_Columns = TypeVarTuple("_Columns")


def _where(stmt: Select[*_Columns], f: QueueFilter, now: datetime) -> Select[*_Columns]:
    if f.status == ACTIVE:
        stmt = stmt.where(WorkOrder.status != _RESOLVED)
    elif f.status != "all":
        stmt = stmt.where(WorkOrder.status == f.status)
    if f.request_type:
        stmt = stmt.where(WorkOrder.request_type == f.request_type)
    if f.priority:
        stmt = stmt.where(WorkOrder.priority == f.priority)
    if f.assignee == "none":
        stmt = stmt.where(WorkOrder.assignee_id.is_(None))
    elif f.assignee:
        stmt = stmt.where(WorkOrder.assignee_id == select(User.id).where(
            User.name == f.assignee).scalar_subquery())
    if f.needs_review is not None:
        stmt = stmt.where(WorkOrder.needs_review.is_(f.needs_review))
    if f.sla == BREACHED:
        stmt = stmt.where(WorkOrder.next_due <= now)
    elif f.sla == AT_RISK:
        stmt = stmt.where(WorkOrder.at_risk_at <= now, WorkOrder.next_due > now)
    elif f.sla == ON_TRACK:
        stmt = stmt.where(or_(WorkOrder.at_risk_at > now,
                              and_(WorkOrder.next_due.is_(None),
                                   WorkOrder.status.not_in(("waiting_client", "resolved")))))
    elif f.sla == PAUSED:
        stmt = stmt.where(WorkOrder.status == "waiting_client")
    if f.q:
        q = f.q.strip()
        if q.upper().startswith("ITX-"):
            stmt = stmt.where(WorkOrder.number == q.upper())
        else:
            like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            stmt = stmt.where(WorkOrder.subject.ilike(like, escape="\\"))
    return stmt


def queue_page(s: Session, policy: SlaPolicy, f: QueueFilter, now: datetime) -> QueuePage:
    from triage.desk import search  # it builds on this module's filters and rows

    if search.is_text_search(f.q):
        ranked: QueuePage = search.search_page(s, policy, f, now)
        return ranked
    total, with_due = s.execute(
        _where(select(func.count(), func.count(WorkOrder.next_due)), f, now)
        .where(_NUMBERED)).one()
    pages = max(1, -(-total // f.page_size))
    page = min(max(1, f.page), pages)
    offset = (page - 1) * f.page_size
    base = (_where(select(WorkOrder), f, now).where(_NUMBERED)
            .options(joinedload(WorkOrder.client), joinedload(WorkOrder.assignee)))
    # Nearest due first; work orders without a running clock (paused, resolved) last, by id.
    # Two reads rather than one ORDER BY (next_due IS NULL), so that each reads an index in
    # order (the 0004 index over active work orders, or the primary key) instead of sorting.
    found: list[WorkOrder] = []
    if offset < with_due:
        found += s.scalars(base.where(WorkOrder.next_due.is_not(None))
                           .order_by(WorkOrder.next_due, WorkOrder.id)
                           .offset(offset).limit(f.page_size))
    if len(found) < f.page_size and total > with_due:
        found += s.scalars(base.where(WorkOrder.next_due.is_(None))
                           .order_by(WorkOrder.id)
                           .offset(max(0, offset - with_due)).limit(f.page_size - len(found)))
    replied = client_replied(s, found)
    rows = [QueueRow(wo, client_label(wo), wo.assignee.name if wo.assignee else None,
                     sla_state(wo, now), nearest_clock(wo, policy, now), wo.id in replied)
            for wo in found]
    return QueuePage(rows, total, page, pages, queue_counts(s, now))


def client_label(wo: WorkOrder) -> str:
    """The client's name as recorded (``triage client set --name``); for a client known only
    by its mail domain (the name the store gives a new client), the requester's name, else
    the requester's address."""
    c = wo.client
    if c is not None and c.name and c.name != c.domain:
        return c.name
    return wo.requester_name or wo.requester or (c.name if c is not None else "")


def client_replied(s: Session, wos: Sequence[WorkOrder]) -> set[int]:
    """The ids of the work orders whose client has the last word, ordered as the work-order
    page orders its thread (``triage.desk.thread``), for one page of rows: two reads of the
    columns that ordering needs, bodies left out."""
    ids = [wo.id for wo in wos]
    if not ids:
        return set()
    entries: dict[int, list[Entry]] = {i: [] for i in ids}
    for row in s.execute(
            select(Message.work_order_id, Message.id, Message.message_id, Message.in_reply_to,
                   Message.references, Message.subject, Message.received_at,
                   Message.created_at, Message.disposition)
            .where(Message.work_order_id.in_(ids), Message.direction == "in")):
        entries[row[0]].append(message_entry(*row[1:]))
    # The kind is filtered here, not in SQL: with ``kind IN (...)`` in the query SQLite's
    # planner searches ix_outbox_kind_created, every acknowledgment ever sent, instead of
    # the few rows of these work orders (ix_outbox_work_order_id).
    for wo_id, o_id, kind, message_id, context, created_at in s.execute(
            select(Outbox.work_order_id, Outbox.id, Outbox.kind, Outbox.message_id,
                   Outbox.context, Outbox.created_at)
            .where(Outbox.work_order_id.in_(ids))):
        if kind in OURS:
            entries[wo_id].append(outbox_entry(o_id, kind, message_id, context, created_at))
    return {wo.id for wo in wos
            if client_has_last_word(in_order(entries[wo.id], wo.number))}


def queue_counts(s: Session, now: datetime) -> QueueCounts:
    """Counts over the active work orders, in one grouped scan."""
    breached = func.sum(case((WorkOrder.next_due <= now, 1), else_=0))
    at_risk = func.sum(case((and_(WorkOrder.at_risk_at <= now, WorkOrder.next_due > now), 1),
                            else_=0))
    review = func.sum(case((WorkOrder.needs_review.is_(True), 1), else_=0))
    by_type: dict[str, int] = {}
    totals = [0, 0, 0, 0]
    for rtype, n, r, a, b in s.execute(
        select(WorkOrder.request_type, func.count(), review, at_risk, breached)
        .where(WorkOrder.status != _RESOLVED, _NUMBERED)
        .group_by(WorkOrder.request_type)
    ):
        by_type[rtype] = n
        for i, v in enumerate((n, r, a, b)):
            totals[i] += int(v or 0)
    return QueueCounts(dict(sorted(by_type.items())), totals[1], totals[2], totals[3],
                       totals[0])


def nearest_clock(wo: WorkOrder, policy: SlaPolicy, now: datetime) -> Clock | None:
    if wo.status in ("resolved", "waiting_client"):
        return None
    pauses = pauses_of(wo)
    # Choosing the nearest clock needs each clock's due only; the elapsed open time, which for
    # a clock started weeks ago is most of the cost, is measured for the chosen one alone.
    best: SlaClock | None = None
    best_due: datetime | None = None
    for c in clocks(wo, policy):
        due = moved_due(c.start, c.due, c.calendar, close_pauses(pauses, now))
        if best_due is None or due < best_due:
            best, best_due = c, due
    return None if best is None else Clock(best.target, measure(best, now, pauses))


def format_remaining(left: timedelta) -> str:
    """``3h 20m left`` / ``overdue 1d 2h`` in business time (the clock's own calendar)."""
    overdue = left < timedelta(0)
    minutes = int(abs(left).total_seconds() // 60)
    d, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    text = f"{d}d {h}h" if d else (f"{h}h {m:02d}m" if h else f"{m}m")
    return f"overdue {text}" if overdue else f"{text} left"


# ---- one work order ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ThreadItem:
    at: datetime
    kind: str  # in | ack | reply | note | call
    message: Message | None = None
    outbox: Outbox | None = None
    event: Event | None = None


@dataclass(frozen=True)
class Detail:
    wo: WorkOrder
    client: Client
    thread: list[ThreadItem]
    events: list[Event]
    corrections: list[Correction]
    timezone: str
    clocks: list[Clock] = field(default_factory=list)
    sla: str = ON_TRACK
    client_replied: bool = False  # see triage.desk.thread.client_has_last_word
    history: list[HistoryRow] = field(default_factory=list)


@dataclass(frozen=True)
class HistoryRow:
    wo: WorkOrder
    same_requester: bool  # requested by this work order's requester too


HISTORY_SIZE = 20


def _history_order(q: Select[WorkOrder]) -> Select[WorkOrder]:
    return q.order_by((WorkOrder.status == _RESOLVED).asc(), WorkOrder.received_at.desc(),
                      WorkOrder.id.desc()).limit(HISTORY_SIZE)


def client_history(s: Session, wo: WorkOrder) -> list[HistoryRow]:
    """The client's and the requester's other work orders, open first, then newest first.

    Two queries, each cut to the list's size before merging: the client's through the index
    on ``client_id``; the requester's under another client (rare, as clients are keyed on the
    sender's domain, but a client row can be re-keyed) through the index on
    ``messages.from_addr``, since a work order's root message is from its requester and
    ``work_orders.requester`` has no index.
    """
    numbered = [WorkOrder.id != wo.id, _NUMBERED]
    # Senders with no usable domain share one client row (UNKNOWN_CLIENT): they are not one
    # client, so only the requester's own work orders are theirs.
    unknown = wo.client.domain == UNKNOWN_CLIENT
    rows = [] if unknown else list(s.scalars(_history_order(
        select(WorkOrder).where(WorkOrder.client_id == wo.client_id, *numbered))))
    if wo.requester:
        other_clients = [] if unknown else [WorkOrder.client_id != wo.client_id]
        rows += s.scalars(_history_order(select(WorkOrder).where(
            WorkOrder.id.in_(select(Message.work_order_id)
                             .where(Message.from_addr == wo.requester,
                                    Message.work_order_id.is_not(None))),
            WorkOrder.requester == wo.requester, *other_clients, *numbered)))
    rows.sort(key=lambda w: (w.status == "resolved", -w.received_at.timestamp(), -w.id))
    return [HistoryRow(w, bool(wo.requester) and w.requester == wo.requester)
            for w in rows[:HISTORY_SIZE]]


def work_order_detail(s: Session, policy: SlaPolicy, number: str,
                      now: datetime) -> Detail | None:
    wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number)
                  .options(joinedload(WorkOrder.client), joinedload(WorkOrder.assignee)))
    if wo is None:
        return None
    messages = list(s.scalars(
        select(Message).where(Message.work_order_id == wo.id)
        .options(selectinload(Message.attachments))
        .order_by(Message.received_at, Message.id)))
    # Our mail to the work orders merged into this one is part of its thread too.
    merged = select(WorkOrder.id).where(WorkOrder.merged_into_id == wo.id)
    outbox = list(s.scalars(select(Outbox).where(or_(Outbox.work_order_id == wo.id,
                                                     Outbox.work_order_id.in_(merged)))
                            .options(selectinload(Outbox.attachments)).order_by(Outbox.id)))
    events = list(s.scalars(select(Event).where(Event.work_order_id == wo.id)
                            .order_by(Event.at, Event.id)))
    corrections = list(s.scalars(select(Correction).where(Correction.work_order_id == wo.id)
                                 .order_by(Correction.id)))
    entries = [message_entry(m.id, m.message_id, m.in_reply_to, m.references, m.subject,
                             m.received_at, m.created_at, m.disposition,
                             ThreadItem(m.received_at, "in", message=m)) for m in messages]
    entries += [outbox_entry(o.id, o.kind, o.message_id, o.context, o.created_at,
                             ThreadItem(o.created_at, o.kind, outbox=o))
                for o in outbox if o.kind in OURS]
    entries += [Entry("note" if e.action == "note" else "call", e.id, e.at,
                      ref=ThreadItem(e.at, "note" if e.action == "note" else "call", event=e))
                for e in events if e.action in ("note", "called_back")]
    ordered = in_order(entries, wo.number)
    thread = [e.ref for e in ordered if isinstance(e.ref, ThreadItem)]
    pauses = pauses_of(wo)
    measured = ([] if wo.status in ("resolved", "waiting_client") else
                [Clock(c.target, measure(c, now, pauses)) for c in clocks(wo, policy)])
    tz = contract_calendar(policy, wo.contract).tz.key
    return Detail(wo, wo.client, thread, events, corrections, tz, measured,
                  sla_state(wo, now), client_has_last_word(ordered), client_history(s, wo))


def attachment_for(s: Session, number: str, attachment_id: int) -> AttachmentRow | None:
    """The attachment, only if it belongs to a message or a staff reply of this work order."""
    return s.scalar(
        select(AttachmentRow)
        .outerjoin(Message, Message.id == AttachmentRow.message_pk)
        .outerjoin(Outbox, Outbox.id == AttachmentRow.outbox_id)
        .join(WorkOrder, WorkOrder.id == func.coalesce(Message.work_order_id,
                                                       Outbox.work_order_id))
        .where(AttachmentRow.id == attachment_id, WorkOrder.number == number))


def staff_names(s: Session) -> Sequence[tuple[str, str]]:
    return [(u.name, u.display_name or u.name) for u in
            s.scalars(select(User).where(User.active).order_by(User.name))]


__all__ = [
    "ACTIVE", "HISTORY_SIZE", "PAGE_SIZE", "SLA_FILTERS", "STATUS_FILTERS", "Clock", "Detail",
    "HistoryRow", "QueueCounts", "QueueFilter", "QueuePage", "QueueRow", "ThreadItem",
    "attachment_for", "client_history", "client_label", "client_replied", "format_remaining",
    "nearest_clock", "queue_counts", "queue_page", "staff_names", "work_order_detail",
]
