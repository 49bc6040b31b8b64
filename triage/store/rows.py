"""Inserting the rows of plans, as Core statements on the session's connection: one
``INSERT … RETURNING`` per table for any number of plans, so a batch of 50 messages costs
about as many statements as one message. Both writers use it; they differ only in how many
plans they give it at once and under which savepoint."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.outbox.enqueue import Mail, enqueue
from triage.storage.models import (
    AttachmentRow,
    Client,
    Event,
    Fetch,
    Message,
    RawBlob,
    WorkOrder,
)
from triage.store.model import format_number
from triage.store.plan import NewClient, NewMail, Plan, Ref, resolve


def _table(model: Any) -> Table:
    return cast(Table, model.__table__)


def write_rows(conn: Connection, plans: Sequence[Plan], *, domain: str,
               now: datetime) -> None:
    """Insert every row ``plans`` hold, filling in their ``Ref`` ids."""
    clients = [p.client for p in plans if p.client is not None and p.client.ref.id is None]
    if clients:
        t = _table(Client)
        ids = conn.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
            {"domain": c.key, "name": c.key, "contract": c.contract, "created_at": now}
            for c in clients]).scalars().all()
        for c, i in zip(clients, ids, strict=True):
            c.ref.id = i
    wos = [p.new_work_order for p in plans if p.new_work_order is not None]
    if wos:
        t = _table(WorkOrder)
        ids = conn.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
            {**w.values, "client_id": resolve(w.client), "number": None} for w in wos
        ]).scalars().all()
        for w, i in zip(wos, ids, strict=True):
            w.ref.id = i
        conn.execute(update(t).where(t.c.id == bindparam("wo_id"))
                     .values(number=bindparam("wo_number")),
                     [{"wo_id": i, "wo_number": format_number(i)} for i in ids])
    messages = [p.message for p in plans if p.message is not None]
    if messages:
        t = _table(Message)
        ids = conn.execute(insert(t).returning(t.c.id, sort_by_parameter_order=True), [
            {**m.values, "work_order_id": resolve(m.work_order)} for m in messages
        ]).scalars().all()
        for m, i in zip(messages, ids, strict=True):
            m.ref.id = i
        conn.execute(insert(_table(RawBlob)), [
            {"message_pk": m.ref.get(), "data": m.raw, "truncated": m.truncated}
            for m in messages])
        attachments = [{**a, "message_pk": m.ref.get()} for m in messages for a in m.attachments]
        if attachments:
            conn.execute(insert(_table(AttachmentRow)), attachments)
    fetches = [p.fetch for p in plans if p.fetch is not None]
    if fetches:
        conn.execute(insert(_table(Fetch)), [
            {"mailbox": f.mailbox, "uidvalidity": f.uidvalidity, "uid": f.uid,
             "message_pk": resolve(f.message), "duplicate": f.duplicate, "fetched_at": f.at}
            for f in fetches])
    mails = [m for p in plans for m in p.mails]
    if mails:
        enqueue(conn, [_mail(m) for m in mails], domain=domain, now=now)
    events = [e for p in plans for e in p.events]
    if events:
        conn.execute(insert(_table(Event)), [
            {"work_order_id": resolve(e.work_order), "actor": e.actor, "action": e.action,
             "detail": {k: resolve(v) if isinstance(v, Ref) else v for k, v in e.detail.items()},
             "at": e.at, "wo_version": e.wo_version} for e in events])
    changes = [c for p in plans for c in p.changes]
    if changes:
        t = _table(WorkOrder)
        conn.execute(update(t).where(t.c.id == bindparam("wo_id")).values(
            {k: bindparam(f"new_{k}") for k in changes[0].values}),
            [{"wo_id": c.work_order_id, **{f"new_{k}": v for k, v in c.values.items()}}
             for c in changes])


def _mail(m: NewMail) -> Mail:
    """The outbox row of ``m``, its work order's id and number filled in where the plan
    could not know them (``NewMail``)."""
    wo_id = m.work_order.get() if isinstance(m.work_order, Ref) else m.work_order
    number = format_number(wo_id)
    context = m.context
    if "number" in context and context["number"] is None:
        context = {**context, "number": number}
    return Mail(kind=m.kind, work_order_id=wo_id, number=number, to_addr=m.to_addr,
                template=m.template, context=context,
                notify_key=m.notify_key.replace("{wo}", str(wo_id)) if m.notify_key else None)


def claim_client(s: Session, client: NewClient, now: datetime) -> None:
    """Insert a new client, or take the one another poller created a moment ago
    (PostgreSQL: the unique key waits for the other transaction, then refuses)."""
    try:
        with s.begin_nested():
            client.ref.id = s.connection().execute(
                insert(_table(Client)).returning(Client.id).values(
                    domain=client.key, name=client.key, contract=client.contract,
                    created_at=now)).scalar_one()
    except IntegrityError:
        client.ref.id = s.connection().execute(select(Client.id).where(
            Client.domain == client.key)).scalar_one()
