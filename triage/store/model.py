"""The store's plain data and the small pure rules its modules share: what comes in
(``Ingest``), what goes out (``Outcome``), its settings, and the keys it files messages by."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from sqlalchemy.exc import InterfaceError, OperationalError

from classifiers.types import Decision
from triage.addresses import AddressError, RateLimits, SendPolicy, normalise
from triage.messages import ParsedEmail, RawMessage

TAG_RE = re.compile(r"\[(ITX-\d{6,})\]")

# Failures of the environment (disk, database connection), not of a message: the batch is
# retried later, never quarantined.
ENVIRONMENT = (OSError, OperationalError, InterfaceError)

FetchKey = tuple[str, int, str]  # mailbox, UIDVALIDITY, UID


@dataclass(frozen=True)
class Ingest:
    """One fetched message and what the earlier stages made of it.

    ``error`` set (parse failure, oversize) means: quarantine with this reason.
    """

    raw: RawMessage
    parsed: ParsedEmail | None = None
    decision: Decision | None = None
    error: str | None = None

    @property
    def fetch_key(self) -> FetchKey:
        return (self.raw.mailbox, self.raw.uidvalidity, self.raw.uid)

    @cached_property
    def fingerprint(self) -> str | None:
        """What makes the message itself (``fingerprint``), once parsed."""
        return None if self.parsed is None else fingerprint_of(self.parsed)

    @property
    def decidable(self) -> bool:
        """Parsed and classified: the storing rules apply (else it is quarantined)."""
        return self.parsed is not None and self.decision is not None and not self.error


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
    screened_by: str | None = None  # a non-request's: triage.screening.SCREENED_BY (metrics)
    # A new work order's: why no acknowledgment was queued, a fixed code (ACK_REASONS).
    ack_refused: str | None = None


@dataclass(frozen=True)
class StoreConfig:
    """The store's settings. The rate limits' defaults are ``Settings``' (triage.config says
    why those numbers); ``own_addresses`` and ``own_domains`` are ours besides
    ``from_address`` and its domain (the address policy, triage.addresses)."""

    from_address: str
    ack_rate_per_hour: int  # per normalised address
    attachments_dir: Path
    review_threshold: float
    mailbox_state: bool = True
    at_risk_fraction: float = 0.75  # for the queue's SLA marks (triage.slamarks)
    ack_rate_per_domain_per_hour: int = 30  # a domain that is not free mail
    ack_rate_global_per_hour: int = 1000
    own_addresses: tuple[str, ...] = ()
    own_domains: tuple[str, ...] = ()
    # A webhook is configured: new urgent work orders queue a webhook row (triage.notify).
    notify_webhook: bool = False

    @cached_property
    def send_policy(self) -> SendPolicy:
        """Whom no acknowledgment may go to: the policy the outbox applies at send time,
        built from the same settings (triage.wiring.send_policy)."""
        return SendPolicy.of((self.from_address, *self.own_addresses),
                             (*self.own_domains, domain_of(self.from_address)))

    @cached_property
    def mailbox_key(self) -> str:
        """The helpdesk mailbox's own address as ``normalise`` keys it, so that mail from it
        in any spelling (``helpdesk+x@itx.net``, ``HelpDesk@itx.net``) is known as ours.
        Only this address: staff addresses (``own_addresses``) may write to the helpdesk
        and open work orders like anyone."""
        try:
            return normalise(self.from_address)
        except AddressError:
            return self.from_address.casefold()

    def from_mailbox(self, addr: str | None) -> bool:
        if not addr:
            return False
        if addr == self.from_address:
            return True
        try:
            return normalise(addr) == self.mailbox_key
        except AddressError:
            return False

    @property
    def rate_limits(self) -> RateLimits:
        return RateLimits(self.ack_rate_per_hour, self.ack_rate_per_domain_per_hour,
                          self.ack_rate_global_per_hour)


class RetryBatch(Exception):
    """A failure of the environment (disk, database connection), not of the message: the
    whole batch is rolled back and left unmarked, so it is fetched and tried again."""


def format_number(pk: int) -> str:
    return f"ITX-{pk:06d}"


def next_version(version: int | None) -> int:
    """A work order's version after a change staff must see before they act (the collision
    guard: a page made before it is refused). One step per action or client reply."""
    return (version or 1) + 1


def fetch_dedupe_key(raw: RawMessage) -> str:
    """The key of a message only its fetch identifies (a quarantined one)."""
    return f"fetch:{raw.mailbox}:{raw.uidvalidity}:{raw.uid}"[:1024]


def dedupe_key(parsed: ParsedEmail | None, raw: RawMessage) -> str:
    if parsed and parsed.message_id:
        return "mid:" + parsed.message_id[:1000]
    if parsed:
        return "sha:" + parsed.content_hash
    return fetch_dedupe_key(raw)


def reuse_key(message_id: str, fingerprint: str) -> str:
    """The key of a message whose Message-ID an earlier, different message carries."""
    return f"mid+fp:{fingerprint}:{message_id[:900]}"


# What makes a message itself. Not the trace (Received, DKIM, ARC, Return-Path, X-…),
# which every hop adds to: the same message delivered twice differs only there.
IDENTITY_HEADERS = ("from", "to", "cc", "subject", "date")


def fingerprint(headers: Iterable[Sequence[str]], text: str, html: str | None,
                attachment_sha256s: Iterable[str]) -> str:
    """A SHA-256 over the identity headers, the body (text and HTML) and the attachments.

    Worked out from what the store keeps of a message (its decoded headers, body text and
    HTML, and attachment hashes), so a row stored without one can be given one later.
    Line endings and trailing white space are not content: a relay may change them."""
    wanted: dict[str, list[str]] = {name: [] for name in IDENTITY_HEADERS}
    for name, value in headers:
        values = wanted.get(str(name).strip().lower())
        if values is not None:
            values.append(" ".join(str(value).split()))
    doc = [wanted, _body(text), _body(html or ""), sorted(attachment_sha256s)]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()


def fingerprint_of(p: ParsedEmail) -> str:
    return fingerprint(p.headers, p.text, p.html, (a.sha256 for a in p.attachments))


def _body(text: str) -> str:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "\n".join(line.rstrip() for line in lines).strip()


# Mail providers whose users are not one client: on these, "same client" means same address.
FREEMAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "outlook.com", "hotmail.com",
    "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com", "proton.me",
    "protonmail.com", "gmx.com", "gmx.net", "mail.com", "zoho.com", "yandex.com",
    "comcast.net", "verizon.net", "att.net", "sbcglobal.net", "cox.net", "earthlink.net",
})


def domain_of(addr: str) -> str:
    return addr.rsplit("@", 1)[-1].lower() if "@" in addr else ""


# The client row of every sender with no usable domain (they are not one client).
UNKNOWN_CLIENT = "unknown"


def client_key(addr: str) -> str:
    """The ``clients.domain`` a sender belongs to: the domain, or the address on free mail."""
    domain = domain_of(addr)
    if not domain or len(domain) > 253:
        return UNKNOWN_CLIENT
    return addr.lower()[:255] if domain in FREEMAIL else domain


def attachment_path(attachments_dir: Path, sha256: str) -> Path:
    """Content-addressed, so a rolled-back batch leaves at most an orphan, never a clash."""
    return attachments_dir / sha256[:2] / sha256


def save_attachment(attachments_dir: Path, sha256: str, payload: bytes) -> Path:
    path = attachment_path(attachments_dir, sha256)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(payload)
        tmp.replace(path)
    return path
