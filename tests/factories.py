"""Plain helpers the test modules share (fixtures live in ``tests/conftest.py`` and its
plugins): a settable clock, a loopback port, mail as bytes and as fetched, hand-made
decisions, a work order row, a scripted mailbox, an acknowledgment's view, a Maildir inbox
with the components that read it, and queries on a service's database."""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from classifiers.types import Decision
from triage.ack import AckView
from triage.config import Settings
from triage.mailbox import TransientMailboxError
from triage.mailbox.maildir import MaildirMailbox
from triage.messages import RawMessage
from triage.parse import parse
from triage.storage.models import Client, WorkOrder
from triage.wiring import Components, build
from triage.workorders import Ingest

if TYPE_CHECKING:
    from triage.service import Service
    from triage.sla import SlaPolicy

FRI_10 = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)  # Friday 10:00 New York
NOW = FRI_10  # the store's and the web app's "now" where the weekday does not matter
MBOX = "imap://helpdesk@127.0.0.1:1/INBOX"


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


# ---- what the store is given ------------------------------------------------------------------
def mail(
    uid: int,
    *,
    frm: str = "dana@harborview.com",
    subject: str = "help",
    mid: str | None = None,
    extra: str = "",
    body: str = "Outlook is broken",
    at: datetime | None = None,
) -> RawMessage:
    """A client's mail as fetched from ``MBOX`` (UIDVALIDITY 7, UID ``uid``)."""
    mid = mid if mid is not None else f"m{uid}@harborview.com"
    head = f"From: {frm}\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
    if mid:
        head += f"Message-ID: <{mid}>\r\n"
    data = (head + extra + "\r\n" + body + "\r\n").encode()
    return RawMessage(MBOX, 7, str(uid), len(data), data, internal_date=at)


def req(label: str = "email_problem", priority: str = "urgent", conf: float = 0.9) -> Decision:
    return Decision(
        label=label, confidence=conf, priority=priority, needs_review=False, model_version="test"
    )


def nonreq(kind: str, *, by_header: bool | None = None) -> Decision:
    """A non-request as the classifier gives it: screened by a header (``screened_by``
    "header") for the kinds the header screen finds unless ``by_header`` says otherwise,
    else by the text model (``screened_by`` None)."""
    if by_header is None:
        by_header = kind in ("auto_reply", "bounce", "bulk")
    return Decision(
        label="not_a_request",
        confidence=0.99,
        priority=None,
        needs_review=False,
        non_request_kind=kind,
        screened_by="header" if by_header else None,
    )


def ingest(raw: RawMessage, d: Decision) -> Ingest:
    assert raw.data is not None
    return Ingest(raw=raw, parsed=parse(raw.data), decision=d)


# ---- what the daemon reads and writes -------------------------------------------------------
class ScriptedMailbox:
    """A mailbox that serves ``messages`` (UIDs 1, 2, ...) until marked, or fails as told."""

    name = "scripted://test"

    def __init__(self, messages: list[bytes] | None = None, fail: type[Exception] | None = None,
                 fail_connect: bool = False) -> None:
        self.messages = list(messages or [])
        self.fail, self.fail_connect = fail, fail_connect
        self.connects = self.polls = 0
        self.marked: list[str] = []

    @property
    def uidvalidity(self) -> int:
        return 1

    async def connect(self) -> None:
        self.connects += 1
        if self.fail_connect:
            raise TransientMailboxError("connection refused")

    async def close(self) -> None:
        return None

    async def batches(self, batch_size: int = 50) -> AsyncGenerator[list[RawMessage], None]:
        self.polls += 1
        if self.fail:
            raise self.fail("server said NO")
        waiting = [(str(i), m) for i, m in enumerate(self.messages, 1)
                   if str(i) not in self.marked]
        if waiting:
            yield [RawMessage(self.name, 1, uid, len(m), m) for uid, m in waiting]

    async def mark_done(self, messages: Sequence[RawMessage]) -> None:
        self.marked += [m.uid for m in messages]

    async def wait_for_new(self, timeout: float) -> bool:
        await asyncio.sleep(min(timeout, 0.05))
        return False


OUTLOOK_REQUEST = (b"From: Dana <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n"
                   b"Subject: cannot send email\r\nMessage-ID: <s1@harborview.com>\r\n\r\n"
                   b"Outlook cannot send any email since this morning.\r\n")


def deliver(inbox: Path, name: str, data: bytes) -> None:
    """``data`` as a new message in the Maildir ``inbox`` (made if missing)."""
    for sub in ("new", "cur", "tmp"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    (inbox / "new" / name).write_bytes(data)


def maildir_components(tmp_path: Path, first: bytes, smtp_url: str,
                       **settings: Any) -> tuple[Components, Settings, Path]:
    """The daemon's components reading the Maildir ``tmp_path / "inbox"``, which holds
    ``first``, and sending to ``smtp_url``; SQLite unless ``settings`` names a database."""
    inbox = tmp_path / "inbox"
    deliver(inbox, "1.a.host", first)
    values: dict[str, Any] = dict(database_url=f"sqlite:///{tmp_path / 'r.db'}",
                                  mailbox_url=f"maildir://{inbox}", smtp_url=smtp_url,
                                  attachments_dir=tmp_path / "att")
    made = Settings(**{**values, **settings})
    return build(made, mailbox=MaildirMailbox(inbox)), made, inbox


def ack_view(subject: str, priority: str = "urgent") -> AckView:
    """An acknowledgment's view with fixed dates, for rendering it."""
    t = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    return AckView(number="ITX-000042", request_type="email_problem", priority=priority,
                   priority_meaning="an outage", to_addr="dana@harborview.com",
                   message_id="ITX-000042.ack.7.abc@itx.net", in_reply_to="m1@harborview.com",
                   references=("m0@harborview.com", "m1@harborview.com"), subject=subject,
                   timezone="America/New_York", response_due=t, callback_due=t,
                   fulfil_due=t, milestones=(), date=t)
