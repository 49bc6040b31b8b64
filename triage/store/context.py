"""What the storing rules need to know about the database, looked up for a whole batch at
once: one query per kind (fetch keys, dedupe keys, our own Message-IDs, threads, work
orders, clients, acknowledgment counts) instead of a dozen per message.

Acknowledgments are counted for the rate limits (triage.addresses) by the keys every outbox
row carries (``to_key``, the normalised address; ``to_domain``), with one grouped query per
kind of limit, each on its own index (migration 0009).

The context is also the decision step's memory within a batch: as each message is planned,
``decide`` records what it adds (its fetch key, its dedupe key, a new client, an
acknowledgment, a work order's new state), so the next message is decided as if the rows
before it were already written. The careful writer looks up a context per message instead,
after the rows of the messages before it are written.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, func, select

from triage.addresses import AddressError, rate_keys
from triage.messages import ParsedEmail
from triage.storage.engine import in_chunks
from triage.storage.models import AttachmentRow, Client, Fetch, Message, Outbox, User, WorkOrder
from triage.store.model import (
    TAG_RE,
    FetchKey,
    Ingest,
    client_key,
    dedupe_key,
    fingerprint,
    reuse_key,
)
from triage.store.plan import RowId

_WO_COLUMNS = tuple(c.key for c in WorkOrder.__table__.columns)


class WorkOrderView:
    """A work order's columns as plain attributes, plus its client's key (``client_key``):
    what the threading rules read and ``triage.slamarks`` computes on, without the ORM."""

    # The columns the storing rules read or change (all the others are there too).
    id: int
    number: str | None
    requester: str
    status: str
    resolved_at: datetime | None
    pauses: list[Any]
    next_due: datetime | None
    at_risk_at: datetime | None
    updated_at: datetime
    version: int  # the collision guard's count (``next_version``)
    merged_into_id: int | None  # merged into that work order (triage.desk.merge)
    client_key: str  # its client's ``clients.domain``
    client_name: str | None
    assignee_email: str | None  # an active assignee's address (their notifications)

    def __init__(self, values: dict[str, Any]) -> None:
        # Every column, None unless given: a column added later reads as on a new row.
        self.__dict__.update(dict.fromkeys(_WO_COLUMNS), client_name=None, assignee_email=None)
        self.__dict__.update(values)

    def copy(self) -> WorkOrderView:
        return WorkOrderView(dict(self.__dict__))


@dataclass
class BatchContext:
    already: set[FetchKey] = field(default_factory=set)  # fetch keys stored
    # dedupe key -> (message, its fingerprint)
    messages: dict[str, tuple[RowId, str | None]] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)  # Message-IDs of our outbox
    outbox_thread: dict[str, int] = field(default_factory=dict)  # our Message-ID -> WO id
    message_thread: dict[str, int] = field(default_factory=dict)  # their Message-ID -> WO id
    work_orders: dict[int, WorkOrderView] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)  # work-order number -> id
    clients: dict[str, tuple[RowId, str]] = field(default_factory=dict)  # key -> (id, contract)
    # Acknowledgments queued in the last hour: by normalised address (to_key), by domain
    # (to_domain; free-mail domains are not counted), and to anyone.
    ack_counts: dict[str, int] = field(default_factory=dict)
    ack_domain_counts: dict[str, int] = field(default_factory=dict)
    ack_total: int = 0
    # Planned in this batch and not visible to a lookup until written:
    batch_message_ids: set[str] = field(default_factory=set)
    opened: int = 0  # work orders planned

    def merge(self, fresh: BatchContext) -> None:
        """Take a lookup made after this batch's planned rows were written: it is newer."""
        self.already |= fresh.already
        self.messages.update(fresh.messages)
        self.own |= fresh.own
        self.outbox_thread.update(fresh.outbox_thread)
        self.message_thread.update(fresh.message_thread)
        self.work_orders.update(fresh.work_orders)
        self.numbers.update(fresh.numbers)
        self.clients.update(fresh.clients)
        self.ack_counts.update(fresh.ack_counts)
        self.ack_domain_counts.update(fresh.ack_domain_counts)
        self.ack_total = fresh.ack_total


def stored_fetch_keys(conn: Connection, keys: Iterable[FetchKey]) -> set[FetchKey]:
    """Which of ``keys`` are stored already: the one "already stored?" check."""
    boxes: dict[tuple[str, int], list[str]] = {}
    for mb, uv, uid in keys:
        boxes.setdefault((mb, uv), []).append(uid)
    found: set[FetchKey] = set()
    for (mb, uv), uids in boxes.items():
        for chunk in in_chunks(uids):
            found.update((mb, uv, u) for u in conn.scalars(select(Fetch.uid).where(
                Fetch.mailbox == mb, Fetch.uidvalidity == uv, Fetch.uid.in_(chunk))))
    return found


def lookup(conn: Connection, items: Sequence[Ingest], now: datetime) -> BatchContext:
    """The context of ``items``, as the database holds it now."""
    ctx = BatchContext()
    ctx.already = stored_fetch_keys(conn, (i.fetch_key for i in items))
    ok = [i for i in items if i.decidable]
    parsed: list[ParsedEmail] = [i.parsed for i in ok if i.parsed is not None]
    keys = {dedupe_key(i.parsed, i.raw) for i in ok}
    keys |= {reuse_key(i.parsed.message_id, i.fingerprint) for i in ok
             if i.parsed is not None and i.parsed.message_id and i.fingerprint}
    unknown: dict[int, str] = {}  # stored before fingerprints were
    for chunk in in_chunks(keys):
        for key, message_pk, fp in conn.execute(
                select(Message.dedupe_key, Message.id, Message.fingerprint)
                .where(Message.dedupe_key.in_(chunk))):
            ctx.messages[str(key)] = (message_pk, fp)
            if fp is None:
                unknown[message_pk] = str(key)
    if unknown:
        for message_pk, fp in stored_fingerprints(conn, unknown).items():
            ctx.messages[unknown[message_pk]] = (message_pk, fp)
    for chunk in in_chunks({p.message_id for p in parsed if p.message_id}):
        ctx.own.update(conn.scalars(select(Outbox.message_id).where(
            Outbox.message_id.in_(chunk))))
    refs = {r for p in parsed for r in (p.in_reply_to, *p.references) if r}
    for chunk in in_chunks(refs):
        for mid, wo_id in conn.execute(select(Outbox.message_id, Outbox.work_order_id).where(
                Outbox.message_id.in_(chunk), Outbox.work_order_id.is_not(None))):
            ctx.outbox_thread.setdefault(mid, int(wo_id or 0))
        for in_mid, in_wo_id in conn.execute(select(Message.message_id, Message.work_order_id)
                                             .where(Message.message_id.in_(chunk),
                                                    Message.work_order_id.is_not(None))):
            ctx.message_thread.setdefault(str(in_mid), int(in_wo_id or 0))
    wo_ids = set(ctx.outbox_thread.values()) | set(ctx.message_thread.values())
    tags = {m.group(1) for p in parsed if (m := TAG_RE.search(p.subject))}
    q = (select(WorkOrder.__table__, Client.domain.label("client_key"),
                Client.name.label("client_name"), User.email.label("assignee_email"))
         .join(Client, Client.id == WorkOrder.client_id)
         .outerjoin(User, (User.id == WorkOrder.assignee_id) & User.active))
    for ids in in_chunks(wo_ids):
        _add_work_orders(ctx, conn.execute(q.where(WorkOrder.id.in_(ids))).mappings())
    for numbers in in_chunks(tags):
        _add_work_orders(ctx, conn.execute(q.where(WorkOrder.number.in_(numbers))).mappings())
    _follow_merges(ctx, conn, q)
    _add_senders(ctx, conn, [p.from_addr for p in parsed], now)
    return ctx


def _follow_merges(ctx: BatchContext, conn: Connection, q: Any) -> None:
    """Mail answering a merged work order (its Message-IDs, its tag) threads into the one it
    was merged into: every key that leads to it leads there instead. A merge repoints the
    work orders merged into the one it closes, so one step always reaches an open end."""
    into = {v.id: v.merged_into_id for v in ctx.work_orders.values() if v.merged_into_id}
    if not into:
        return
    missing = set(into.values()) - set(ctx.work_orders)
    for ids in in_chunks(missing):
        _add_work_orders(ctx, conn.execute(q.where(WorkOrder.id.in_(ids))).mappings())
    for mapping in (ctx.outbox_thread, ctx.message_thread, ctx.numbers):
        for key, wo_id in mapping.items():
            if wo_id in into:
                mapping[key] = into[wo_id]
    for wo_id in into:
        del ctx.work_orders[wo_id]


def lookup_sender(conn: Connection, from_addr: str, now: datetime) -> BatchContext:
    """What opening a work order for a message stored earlier needs: its sender's client
    and the acknowledgments sent to the sender in the last hour."""
    ctx = BatchContext()
    _add_senders(ctx, conn, [from_addr], now)
    return ctx


def _add_senders(ctx: BatchContext, conn: Connection, senders: Sequence[str],
                 now: datetime) -> None:
    for chunk in in_chunks({client_key(a) for a in senders}):
        for cid, key, contract in conn.execute(select(Client.id, Client.domain, Client.contract)
                                               .where(Client.domain.in_(chunk))):
            ctx.clients[key] = (cid, contract)
    hour_ago = now - timedelta(hours=1)
    keys: set[str] = set()
    domains: set[str] = set()
    for a in senders:
        try:
            key, domain = rate_keys(a)
        except AddressError:  # refused by the address policy before any count is read
            continue
        keys.add(key)
        if domain is not None:
            domains.add(domain)
    recent = (Outbox.kind == "ack", Outbox.created_at > hour_ago)
    for col, wanted, counts in ((Outbox.to_key, keys, ctx.ack_counts),
                                (Outbox.to_domain, domains, ctx.ack_domain_counts)):
        for chunk in in_chunks(wanted):
            for value, acks in conn.execute(select(col, func.count(Outbox.id))
                                            .where(col.in_(chunk), *recent).group_by(col)):
                counts[str(value)] = int(acks)
    ctx.ack_total = int(conn.scalar(select(func.count(Outbox.id)).where(*recent)) or 0)


def stored_fingerprints(conn: Connection, message_pks: Iterable[int]) -> dict[int, str]:
    """The fingerprints of stored messages, worked out from their stored columns."""
    shas: dict[int, list[str]] = {}
    out: dict[int, str] = {}
    for chunk in in_chunks(message_pks):
        for message_pk, sha in conn.execute(select(AttachmentRow.message_pk, AttachmentRow.sha256)
                                            .where(AttachmentRow.message_pk.in_(chunk))):
            if message_pk is not None:  # always, by the IN; reply files have none
                shas.setdefault(message_pk, []).append(sha)
        for message_pk, headers, text, html in conn.execute(
                select(Message.id, Message.headers, Message.body_text, Message.body_html)
                .where(Message.id.in_(chunk))):
            out[message_pk] = fingerprint(headers or [], text or "", html,
                                          shas.get(message_pk, []))
    return out


def _add_work_orders(ctx: BatchContext, rows: Iterable[Any]) -> None:
    for row in rows:
        view = WorkOrderView(dict(row))
        ctx.work_orders[view.id] = view
        if view.number:
            ctx.numbers[view.number] = view.id


__all__ = ["BatchContext", "WorkOrderView", "lookup", "lookup_sender", "stored_fetch_keys",
           "stored_fingerprints"]
