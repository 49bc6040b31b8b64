"""The one builder of outbox rows and of the Message-IDs our mail carries.

Everything that queues mail (the store's acknowledgments, the desk's replies, the SLA
watch's escalations and pages) writes its rows through ``enqueue``, inside the caller's own
transaction: the row commits with the work order, reply or alert it belongs to, or not at
all (the transactional outbox). The sender reads the rows later and never builds them.

A row's Message-ID is fixed when the row is written, so a resend after a crash is
recognisably the same mail, and it holds a random part, so a stranger cannot thread onto
someone else's work order by quoting a predictable ID. Our own Message-IDs are also how the
store recognises its own mail coming back.

Imports only the tables: the sender, the renderers and SMTP stay out of the writers' way.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, update

from triage.addresses import AddressError, normalise, parse
from triage.storage.models import Outbox

DEFAULT_DOMAIN = "itx.net"


@dataclass(frozen=True)
class Mail:
    """One mail to queue. ``serial`` numbers it in its Message-ID; None: the row's own id."""

    kind: str  # ack | reply | escalation | page | notify | webhook (triage.notify)
    work_order_id: int | None
    number: str  # the work order's number, first in the Message-ID
    to_addr: str
    template: str
    context: dict[str, Any]
    serial: int | None = None
    notify_key: str | None = None  # a staff notification's unique key (triage.notify)


def sender_domain(from_address: str) -> str:
    """The domain our Message-IDs end in: the one we send from."""
    domain = from_address.rsplit("@", 1)[-1].lower() if "@" in from_address else ""
    return domain or DEFAULT_DOMAIN


def rate_columns(to_addr: str) -> tuple[str | None, str | None]:
    """``(to_key, to_domain)`` of a row: the normalised address and its domain, what the
    store's rate limits count (triage.store.context); None for an unparseable address."""
    try:
        return normalise(to_addr), parse(to_addr).domain
    except AddressError:
        return None, None


def message_id(number: str, kind: str, serial: int, domain: str) -> str:
    """Without angle brackets, as the ``outbox.message_id`` column holds it."""
    return f"{number}.{kind}.{serial}.{secrets.token_hex(6)}@{domain}"


def enqueue(conn: Connection, mails: Sequence[Mail], *, domain: str,
            now: datetime) -> list[int]:
    """Insert ``mails`` as pending outbox rows, in order; their ids, in the same order.

    Run on the caller's connection (``Session.connection()``), so the rows are part of its
    transaction. A mail numbered by its row gets a unique placeholder first (the column is
    UNIQUE) and its Message-ID in one more statement for all of them."""
    if not mails:
        return []
    t = Outbox.__table__
    rows: list[dict[str, Any]] = []
    for m in mails:
        to_key, to_domain = rate_columns(m.to_addr)
        rows.append(dict(
            kind=m.kind, work_order_id=m.work_order_id, to_addr=m.to_addr, to_key=to_key,
            to_domain=to_domain, template=m.template, context=m.context,
            message_id=(message_id(m.number, m.kind, m.serial, domain) if m.serial is not None
                        else f"pending-{secrets.token_hex(16)}"),
            status="pending", attempts=0, next_attempt_at=now, claimed_until=None,
            last_error=None, smtp_response=None, sent_at=None, created_at=now,
            notify_key=m.notify_key))
    ids: list[int] = list(conn.execute(
        insert(t).returning(t.c.id, sort_by_parameter_order=True), rows).scalars().all())
    later = [{"ob_id": i, "ob_mid": message_id(m.number, m.kind, i, domain)}
             for m, i in zip(mails, ids, strict=True) if m.serial is None]
    if later:
        conn.execute(update(t).where(t.c.id == bindparam("ob_id"))
                     .values(message_id=bindparam("ob_mid")), later)
    return ids


__all__ = ["DEFAULT_DOMAIN", "Mail", "enqueue", "message_id", "rate_columns", "sender_domain"]
