"""Plain helpers the test modules share (fixtures live in ``tests/conftest.py``): a settable
clock, a loopback port, mail bytes, a work order row, and queries on a service's database."""

from __future__ import annotations

import email
import email.policy
import socket
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from triage.storage.models import Client, WorkOrder

if TYPE_CHECKING:
    from triage.service import Service
    from triage.sla import SlaPolicy


class Clock:
    """A clock the test sets: ``clock.t = ...``; the code under test calls ``clock()``."""

    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


def free_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def msg(
    n: int,
    frm: str,
    subject: str,
    body: str,
    extra: str = "",
    mid: str | None = "auto",
    ctype: str = "text/plain; charset=utf-8",
) -> bytes:
    """A client's mail to the helpdesk; ``mid="auto"`` makes a Message-ID from ``n``."""
    head = f"From: {frm}\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
    head += "Date: Wed, 25 Nov 2026 14:00:00 -0500\r\n"
    if mid == "auto":
        mid = f"<m{n}.{abs(hash(subject)) % 10**8}@client.test>"
    if mid:
        head += f"Message-ID: {mid}\r\n"
    head += f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\n{extra}\r\n"
    return (head + body + "\r\n").encode()


def rows(svc: Service, model: Any, *where: Any) -> list[Any]:
    with svc.c.sessions() as s:
        return list(s.scalars(select(model).where(*where).order_by(model.id)))


def count(svc: Service, model: Any, *where: Any) -> int:
    with svc.c.sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def received(sink: Any) -> list[email.message.EmailMessage]:
    """What an SMTP sink received, parsed."""
    return [
        email.message_from_bytes(r.data, policy=email.policy.default)  # type: ignore[misc]
        for r in sink.received
    ]


def add_work_order(
    s: Session,
    received: datetime,
    *,
    policy: SlaPolicy | None = None,
    domain: str = "harborview.com",
    client_name: str | None = None,
    contract: str = "standard",
    requester: str | None = None,
    subject: str = "Outlook is broken",
    request_type: str = "email_problem",
    priority: str = "urgent",
    confidence: float = 0.9,
    **fields: Any,
) -> WorkOrder:
    """A work order row written directly (not through the store), its client made once per
    domain, numbered as the store numbers them. Due dates from ``policy``; without one, a
    12-hour response target. ``fields``: any other column (status, first_response_at ...)."""
    client = s.scalar(select(Client).where(Client.domain == domain))
    if client is None:
        client = Client(domain=domain, name=client_name or domain, contract=contract)
        s.add(client)
        s.flush()
    if policy is not None:
        due = policy.due(request_type, priority, contract, received)
        dues: dict[str, Any] = dict(clock_start=due.clock_start, response_due=due.response_due,
                                    callback_due=due.callback_due, fulfil_due=due.fulfil_due)
    else:
        dues = dict(clock_start=received, response_due=received + timedelta(hours=12))
    wo = WorkOrder(client_id=client.id, requester=requester or f"dana@{domain}",
                   subject=subject, request_type=request_type, confidence=confidence,
                   priority=priority, contract=contract, received_at=received.astimezone(UTC),
                   **dues, **fields)
    s.add(wo)
    s.flush()
    wo.number = f"ITX-{wo.id:06d}"
    return wo
