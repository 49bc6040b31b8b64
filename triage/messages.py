"""Frozen data passed between stages. A stage knows the next one only through these."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class RawMessage:
    """One message as fetched, before any parsing.

    ``uid`` is the IMAP UID as a decimal string, or the Maildir unique name; together with
    ``mailbox`` and ``uidvalidity`` (0 for Maildir) it is the idempotency key of a fetch.
    ``data`` is None when the message exceeded the size limit and was not loaded whole;
    ``head`` then holds its first bytes (headers) so the quarantine record says what it was.
    """

    mailbox: str
    uidvalidity: int
    uid: str
    size: int
    data: bytes | None
    head: bytes = b""
    internal_date: datetime | None = None

    @property
    def oversize(self) -> bool:
        return self.data is None


@dataclass(frozen=True)
class Attachment:
    filename: str  # sanitised, never a path
    content_type: str
    size: int
    sha256: str
    payload: bytes = field(repr=False, default=b"")


@dataclass(frozen=True)
class ParsedEmail:
    """A message decoded with ``email.policy.default``; every field is safe to display as text."""

    message_id: str | None  # without angle brackets; None when missing or unusable
    subject: str
    from_addr: str  # lower-cased address, "" when missing
    from_name: str
    to: tuple[str, ...]
    date: datetime | None
    in_reply_to: str | None
    references: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]  # every header, in order, decoded
    text: str  # text/plain, or HTML turned into text
    html: str | None  # the raw HTML part when there was one (never sent anywhere)
    attachments: tuple[Attachment, ...]
    defects: tuple[str, ...]  # parser defects, charset fallbacks, truncations
    content_hash: str  # SHA-256 of the raw bytes; idempotency key when Message-ID is missing
    # Why From does not name one sender unambiguously (triage.sender); None when it does.
    # Such a sender is never acknowledged nor trusted as a work order's requester.
    from_problem: str | None = None

    @property
    def from_trusted(self) -> bool:
        return self.from_problem is None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None

    def header_map(self) -> dict[str, str]:
        """First value of each header, keys lower-cased (what the classifier screens)."""
        out: dict[str, str] = {}
        for k, v in self.headers:
            out.setdefault(k.lower(), v)
        return out


@dataclass(frozen=True)
class DueDates:
    """The SLA engine's answer, all instants timezone-aware (UTC inside the service)."""

    clock_start: datetime
    response_due: datetime
    callback_due: datetime | None
    fulfil_due: datetime | None
    milestones: tuple[tuple[str, datetime], ...] = ()
