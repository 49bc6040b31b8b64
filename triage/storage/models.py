"""Tables. Times are stored as UTC (timezone-aware columns; SQLite gets UTC by convention)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on SQLite (naive storage) and PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON,
    }
    if TYPE_CHECKING:
        # SQLAlchemy declares a mapped class's table as any FromClause; every class here is
        # declared with __tablename__, so it is a Table, which insert() and update() take.
        __table__: ClassVar[Table]


class Client(Base):
    __tablename__ = "clients"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain: Mapped[str] = mapped_column(String(255), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    contract: Mapped[str] = mapped_column(String(16), default="standard")  # standard | 24x7
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MailboxState(Base):
    """Checkpoint per mailbox: the UIDVALIDITY seen and the highest UID stored under it."""

    __tablename__ = "mailbox_state"
    mailbox: Mapped[str] = mapped_column(String(512), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, default=0)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Fetch(Base):
    """One fetch key -> the message it delivered. The idempotency record of invariant 2."""

    __tablename__ = "fetches"
    mailbox: Mapped[str] = mapped_column(String(512), primary_key=True)
    uidvalidity: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    uid: Mapped[str] = mapped_column(String(255), primary_key=True)
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"))
    duplicate: Mapped[bool] = mapped_column(Boolean, default=False)
    fetched_at: Mapped[datetime] = mapped_column(default=utcnow)


class Message(Base):
    """Every message, inbound or outbound, and what became of it (``disposition``)."""

    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    direction: Mapped[str] = mapped_column(String(8), default="in")  # in | out
    dedupe_key: Mapped[str | None] = mapped_column(String(1024), unique=True)
    message_id: Mapped[str | None] = mapped_column(String(998), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    # What makes the message itself (triage.store.model.fingerprint): a Message-ID seen
    # again with another fingerprint is another message. NULL: written before migration 0007.
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    from_addr: Mapped[str] = mapped_column(String(320), default="", index=True)
    from_name: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    in_reply_to: Mapped[str | None] = mapped_column(String(998))
    references: Mapped[list[Any]] = mapped_column(default=list)
    headers: Mapped[list[Any]] = mapped_column(default=list)
    body_text: Mapped[str] = mapped_column(Text, default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    defects: Mapped[list[Any]] = mapped_column(default=list)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # work_order | reply | non_request | quarantined
    disposition: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)  # non-request kind or quarantine reason
    # Who screened a non-request out: "header" (the header screen), "model" (the text model)
    # or "store" (our own mail); NULL otherwise. The Screened view's count reads it.
    screened_by: Mapped[str | None] = mapped_column(String(16))
    # What staff need to judge a screening (triage.screening.screening_record): the deciding
    # header, or the model's confidence, deciding words and best request type; and, once
    # handled, who opened or reprocessed it and what it became.
    screening: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_orders.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    raw: Mapped[RawBlob | None] = relationship(back_populates="message", uselist=False)
    attachments: Mapped[list[AttachmentRow]] = relationship(back_populates="message")

    # The Screened view: non-requests and quarantined mail, newest first (migration 0007).
    __table_args__ = (Index("ix_messages_disposition_received", "disposition", "received_at"),)


class RawBlob(Base):
    """Raw bytes kept apart so listing messages never loads them."""

    __tablename__ = "raw_messages"
    message_pk: Mapped[int] = mapped_column(ForeignKey("messages.id"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)  # head only (oversize)
    message: Mapped[Message] = relationship(back_populates="raw")


class AttachmentRow(Base):
    """A file on a client's message (``message_pk``) or on a staff reply (``outbox_id``, the
    reply's outbox row; migration 0015); the file itself is content-addressed on disk."""

    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    message_pk: Mapped[int | None] = mapped_column(ForeignKey("messages.id"), index=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    message: Mapped[Message | None] = relationship(back_populates="attachments")


class WorkOrder(Base):
    __tablename__ = "work_orders"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    number: Mapped[str | None] = mapped_column(String(32), unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id"), index=True)
    requester: Mapped[str] = mapped_column(String(320))
    requester_name: Mapped[str] = mapped_column(String(255), default="")
    subject: Mapped[str] = mapped_column(Text, default="")
    request_type: Mapped[str] = mapped_column(String(64), index=True)
    confidence: Mapped[float] = mapped_column(Float)
    priority: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), default="new", index=True)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str | None] = mapped_column(Text)
    classifier_version: Mapped[str] = mapped_column(String(64), default="")
    evidence: Mapped[list[Any]] = mapped_column(default=list)
    cues: Mapped[list[Any]] = mapped_column(default=list)
    contract: Mapped[str] = mapped_column(String(16), default="standard")
    received_at: Mapped[datetime] = mapped_column()
    clock_start: Mapped[datetime] = mapped_column()
    response_due: Mapped[datetime] = mapped_column()
    callback_due: Mapped[datetime | None] = mapped_column()
    fulfil_due: Mapped[datetime | None] = mapped_column()
    milestones: Mapped[list[Any]] = mapped_column(default=list)
    root_message_id: Mapped[str | None] = mapped_column(String(998))
    first_response_at: Mapped[datetime | None] = mapped_column()
    resolved_at: Mapped[datetime | None] = mapped_column()
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"), index=True)
    promised_at: Mapped[datetime | None] = mapped_column()  # a date promised to the client
    called_back_at: Mapped[datetime | None] = mapped_column()  # stops the call-back clock
    # Waiting-on-client intervals [[start, end | null], ...] as ISO strings; the SLA clocks
    # do not run inside them (triage.sla.clock_state).
    pauses: Mapped[list[Any]] = mapped_column(default=list)
    # Denormalised SLA marks (triage.slamarks), so the queue filters and sorts in SQL: the
    # nearest open due time (pauses included) and the instant the first clock is at risk.
    # NULL while paused, resolved, or not yet computed (the SLA watch fills those in).
    next_due: Mapped[datetime | None] = mapped_column(index=True)
    at_risk_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Counts the changes staff or the client made (triage.desk.actions, a client's reply);
    # a page carries it, and an action sent from an older page is refused (collision guard).
    version: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    # Set on a work order merged into another of the same client (triage.desk.merge): it is
    # resolved, its thread lives on there, and mail answering it threads there.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("work_orders.id"), index=True)

    client: Mapped[Client] = relationship()
    assignee: Mapped[User | None] = relationship()
    merged_into: Mapped[WorkOrder | None] = relationship(remote_side=[id])

    # The staff queue's indexes (migration 0004): partial, over the active work orders only.
    __table_args__ = (
        Index("ix_work_orders_active_due", "next_due", "id", "number",
              sqlite_where=text("status <> 'resolved'"),
              postgresql_where=text("status <> 'resolved'")),
        Index("ix_work_orders_active_counts", "request_type", "needs_review", "next_due",
              "at_risk_at", "number",
              sqlite_where=text("status <> 'resolved'"),
              postgresql_where=text("status <> 'resolved'")),
        # The saved views' counts (migration 0017): "Mine", "Unassigned urgent" and the like.
        Index("ix_work_orders_active_assignee", "assignee_id", "priority", "status",
              "request_type", "needs_review", "next_due", "at_risk_at", "number",
              sqlite_where=text("status <> 'resolved'"),
              postgresql_where=text("status <> 'resolved'")),
    )


class Outbox(Base):
    """A mail to send. Rendered at send time from ``template`` + ``context``; the Message-ID
    is fixed when the row is written, so a resend after a crash is recognisably the same mail."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_orders.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32))  # ack | reply | escalation | page
    to_addr: Mapped[str] = mapped_column(String(320), index=True)
    # What the rate limits count (triage.addresses.rate_keys): the normalised address and
    # its domain; None when to_addr cannot be parsed (the address policy refuses it).
    to_key: Mapped[str | None] = mapped_column(String(320))
    to_domain: Mapped[str | None] = mapped_column(String(255))
    message_id: Mapped[str] = mapped_column(String(998), unique=True)
    template: Mapped[str] = mapped_column(String(128))
    context: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # pending | sending | sent | dead | suppressed (the address policy refused the recipient)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)
    smtp_response: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # One notification to staff (triage.notify): unique, so it is never queued twice.
    notify_key: Mapped[str | None] = mapped_column(String(255), unique=True)

    # A reply's files (the context's "attachments" name them for the renderer).
    attachments: Mapped[list[AttachmentRow]] = relationship(viewonly=True)

    # The claim walks each status in id order (migration 0006); the store counts the last
    # hour's acknowledgments per address, per domain and in all (migration 0009).
    __table_args__ = (
        Index("ix_outbox_status_id", "status", "id"),
        Index("ix_outbox_to_key_kind_created", "to_key", "kind", "created_at"),
        Index("ix_outbox_to_domain_kind_created", "to_domain", "kind", "created_at"),
        Index("ix_outbox_kind_created", "kind", "created_at"),
    )


class SlaAlert(Base):
    """One SLA notice sent: (work order, target, state) is unique, so the database itself
    stops a second notice, even when several processes run the SLA watch at once."""

    __tablename__ = "sla_alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id"))
    target: Mapped[str] = mapped_column(String(32))  # callback|response|fulfil|oncall_return
    state: Mapped[str] = mapped_column(String(16))  # at_risk | breached | paged
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("outbox.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (
        UniqueConstraint("work_order_id", "target", "state", name="uq_sla_alerts_once"),
    )


class User(Base):
    """A staff member. Passwords are argon2id hashes; the API token is kept as its SHA-256
    (it is random and long, so a slow hash buys nothing)."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    password_hash: Mapped[str] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    # Written at most once a minute per token (triage.desk.users.TOKEN_USE_RESOLUTION), so an
    # API script does not take SQLite's write lock on every call.
    api_token_used_at: Mapped[datetime | None] = mapped_column()
    last_login_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebSession(Base):
    """A signed-in browser. Server-side, so logout and lockout end it for real; the cookie
    holds a random token whose SHA-256 is the key (a database leak yields no live cookie)."""

    __tablename__ = "web_sessions"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column()
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)

    user: Mapped[User] = relationship()


class LoginThrottle(Base):
    """Login attempts per typed name and client address (``address`` "*": per name from
    addresses it never logged in from), for the progressive delay of ``triage.desk.logins``.
    Keyed by the name as typed, so an unknown name is throttled exactly like a real one."""

    __tablename__ = "login_throttle"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    not_before: Mapped[datetime] = mapped_column()
    known: Mapped[bool] = mapped_column(Boolean, default=False)  # a login succeeded from here
    last_at: Mapped[datetime] = mapped_column(index=True)


class SavedView(Base):
    """A technician's named queue filter (``triage.desk.views``), kept as the queue's query
    arguments so that a view is a link to the queue."""

    __tablename__ = "saved_views"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    name: Mapped[str] = mapped_column(String(64))
    filters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    __table_args__ = (UniqueConstraint("user_id", "name", name="uq_saved_views_user_name"),)


class Correction(Base):
    """A staff correction of the classifier's type or priority: training data for the
    nightly retrain (exported to ``corrections_dir`` as JSONL, the format of data/training)."""

    __tablename__ = "corrections"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int] = mapped_column(ForeignKey("work_orders.id"), index=True)
    actor: Mapped[str] = mapped_column(String(64))
    old_type: Mapped[str] = mapped_column(String(64))
    new_type: Mapped[str] = mapped_column(String(64))
    old_priority: Mapped[str] = mapped_column(String(16))
    new_priority: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Event(Base):
    """Audit trail: who did what to a work order, and when."""

    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    work_order_id: Mapped[int | None] = mapped_column(ForeignKey("work_orders.id"), index=True)
    actor: Mapped[str] = mapped_column(String(255))
    action: Mapped[str] = mapped_column(String(64))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    # The work order's version this event produced; NULL for events that change nothing a
    # technician acts on (deliveries, suppressions), which therefore never refuse a page.
    wo_version: Mapped[int | None] = mapped_column(Integer)


class CannedReply(Base):
    """A staff-written reply template (triage.desk.canned): Jinja2 text rendered in a sandbox
    over a work order's variables; ``request_types`` are the types it is suggested for."""

    __tablename__ = "canned_replies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True)
    body: Mapped[str] = mapped_column(Text)
    request_types: Mapped[list[Any]] = mapped_column(default=list)
    created_by: Mapped[str] = mapped_column(String(64))
    updated_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OAuthToken(Base):
    """A delegated OAuth2 login (``triage oauth login``): the user's refresh token and the
    access token it last gave, both encrypted (triage.oauth_store), shared by every process
    on the database so that one rotation is seen by all."""

    __tablename__ = "oauth_tokens"
    key: Mapped[str] = mapped_column(String(512), primary_key=True)  # Credential.store_key
    name: Mapped[str] = mapped_column(String(64))  # the credential's metrics label
    refresh_token: Mapped[str] = mapped_column(Text)  # Fernet token
    access_token: Mapped[str | None] = mapped_column(Text, nullable=True)  # Fernet token
    access_expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When the IdP issued the refresh token held now (the login, or its last rotation).
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    authorised_at: Mapped[datetime] = mapped_column(default=utcnow)  # the login
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


__all__ = [
    "AttachmentRow", "Base", "CannedReply", "Client", "Correction", "Event", "Fetch",
    "LoginThrottle", "MailboxState", "Message", "OAuthToken", "Outbox", "RawBlob", "SlaAlert",
    "User", "WebSession", "WorkOrder", "utcnow",
]
