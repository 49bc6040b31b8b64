"""Every Prometheus metric the daemon exposes, on one registry owned by a ``Metrics`` object.

A dedicated registry (not the global default) keeps tests independent and keeps library
metrics from leaking in. Label values come only from fixed sets (types, priorities,
outcomes, kinds, a configured mailbox id): an address, a name or a subject can never become
a label, because a label value is a new time series stored for weeks and shown to anyone
who can read the dashboard.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import NON_REQUEST_KINDS, REQUEST_TYPES
from triage.addresses import ACK_REASONS, REASONS
from triage.screening import SCREENED_BY, STORE
from triage.storage.models import Outbox, SlaAlert, WorkOrder
from triage.workorders import Outcome

if TYPE_CHECKING:
    from triage.oauth import Credential

log = logging.getLogger(__name__)

OUTCOMES: tuple[str, ...] = (
    "work_order", "reply", "non_request", "quarantined", "duplicate", "already", "other",
)
# The store files unknown non-request kinds as "other" (triage.store.decide).
KINDS: tuple[str, ...] = (*NON_REQUEST_KINDS, "other")
# What the Screened view lists: every non-request kind, and quarantined mail.
SCREENED_KINDS: tuple[str, ...] = (*KINDS, "quarantined")
PRIORITIES: tuple[str, ...] = ("urgent", "high", "normal", "other")
TYPES: tuple[str, ...] = tuple(dict.fromkeys((*REQUEST_TYPES, "other")))
OUTBOX_STATUSES: tuple[str, ...] = ("pending", "sending", "dead")
SUPPRESSION_REASONS: tuple[str, ...] = (*REASONS, "other")
ACK_SUPPRESSION_REASONS: tuple[str, ...] = (*ACK_REASONS, "other")
TOKEN_OUTCOMES: tuple[str, ...] = ("ok", "rejected", "unavailable")
CREDENTIAL_KINDS: tuple[str, ...] = ("client_secret", "refresh_token")
# A mailbox id is a short configured token ("support", "inbox-2"), never an address.
MAILBOX_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")

CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)
POLL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _fixed(value: str | None, allowed: Sequence[str], fallback: str = "other") -> str:
    return value if value is not None and value in allowed else fallback


def _check_mailbox_id(mailbox_id: str) -> str:
    if not MAILBOX_ID.fullmatch(mailbox_id):
        raise ValueError("mailbox id must match [A-Za-z0-9_.-]{1,64} (a configured name, "
                         "not an address)")
    return mailbox_id


# Business hours; a business day is 12 h (8:00-20:00), so 12 is the email promise.
FIRST_RESPONSE_BUCKETS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 60.0)
SLA_TARGETS = ("callback", "response", "fulfil", "oncall_return")
# Why a staff login was refused; "credentials" never tells a wrong name from a wrong password.
LOGIN_FAILURES = ("credentials", "delayed", "throttled")
SLA_STATES = ("at_risk", "breached")


class Metrics:
    """The daemon's metrics; create one per process (tests: one per test)."""

    def __init__(self, *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "triage_messages_total", "Fetched messages by what became of them; kind is set "
            "for non_request only.", ["outcome", "kind"], registry=r)
        self.screened = Counter(
            "triage_screened_messages_total", "Messages that opened no work order and are "
            "listed for staff under Screened: non-requests by kind and by what decided "
            "(header, model, store), and quarantined mail (by store).", ["kind", "by"],
            registry=r)
        self.work_orders = Counter(
            "triage_work_orders_opened_total", "Work orders opened.",
            ["request_type", "priority"], registry=r)
        self.confidence = Histogram(
            "triage_classifier_confidence", "Classifier confidence of opened work orders.",
            buckets=CONFIDENCE_BUCKETS, registry=r)
        self.needs_review = Counter(
            "triage_work_orders_needs_review_total", "Work orders flagged for human review.",
            registry=r)
        self.send_attempts = Counter(
            "triage_ack_send_attempts_total", "Outbox send attempts.", registry=r)
        self.send_successes = Counter(
            "triage_ack_send_successes_total", "Outbox sends the server accepted.", registry=r)
        self.send_failures = Counter(
            "triage_ack_send_failures_total", "Outbox sends that failed.", registry=r)
        self.outbox_depth = Gauge(
            "triage_outbox_depth", "Outbox rows by status (at the last refresh).",
            ["status"], registry=r)
        self.outbox_oldest_age = Gauge(
            "triage_outbox_oldest_pending_age_seconds",
            "Age of the oldest unsent (pending or sending) outbox row; 0 when none.",
            registry=r)
        self.suppressed = Counter(
            "triage_outbox_suppressed_total", "Outgoing mails not sent because the address "
            "policy refuses the recipient, by reason (triage.addresses.REASONS).",
            ["reason"], registry=r)
        self.ack_suppressed = Counter(
            "triage_ack_suppressed_total", "New work orders whose acknowledgment was never "
            "queued, by reason (triage.addresses.ACK_REASONS): no or no unambiguous sender, "
            "the address policy, or a rate limit.", ["reason"], registry=r)
        self.relay_refusing = Gauge(
            "triage_smtp_relay_refusing", "1 while the SMTP relay refuses every recipient "
            "(the outbox is paused, rows kept); 0 once it accepts mail again.", registry=r)
        self.outbox_refresh_errors = Counter(
            "triage_outbox_refresh_errors_total", "Failed outbox gauge refreshes.", registry=r)
        self.poll_seconds = Histogram(
            "triage_mailbox_poll_seconds", "Duration of one mailbox poll.", ["mailbox"],
            buckets=POLL_BUCKETS, registry=r)
        self.poll_failures = Counter(
            "triage_mailbox_poll_failures_total", "Mailbox polls that failed.", ["mailbox"],
            registry=r)
        self.poll_last_success = Gauge(
            "triage_mailbox_last_success_timestamp_seconds",
            "Unix time of the last successful poll.", ["mailbox"], registry=r)
        self.first_response = Histogram(
            "triage_first_response_business_hours",
            "From arrival to the first staff reply, in the client's business hours (the "
            "email promise is one business day).", buckets=FIRST_RESPONSE_BUCKETS, registry=r)
        self.sla_open = Gauge(
            "triage_sla_open_work_orders",
            "Unresolved work orders whose target is at risk or breached (at the last refresh).",
            ["target", "state"], registry=r)
        self.token_requests = Counter(
            "triage_oauth_token_requests_total", "Access-token requests to the OAuth2 token "
            "endpoint by credential (the configured name: 'oauth' or a mailbox id) and "
            "outcome: ok, rejected (the credential is refused: a setting must change), "
            "unavailable (the endpoint could not be asked).", ["credential", "outcome"],
            registry=r)
        self.credential_expiry = Gauge(
            "triage_oauth_credential_expiry_timestamp_seconds",
            "Unix time when an OAuth2 credential stops working: a client secret's end date "
            "from the settings, or a refresh token's end of life. Alerted 14 days ahead.",
            ["credential", "kind"], registry=r)
        self.login_failures = Counter(
            "triage_web_login_failures_total", "Refused staff logins by why: credentials "
            "(wrong name or password, not told apart), delayed (the progressive delay per name "
            "and address), throttled (the per-address or overall login rate).", ["reason"],
            registry=r)
        if process:
            ProcessCollector(registry=r)
        # Every fixed series exists from the start, so rate() and absent() behave.
        for outcome in OUTCOMES:
            if outcome != "non_request":
                self.messages.labels(outcome, "")
        for kind in KINDS:
            self.messages.labels("non_request", kind)
            for by in SCREENED_BY:
                self.screened.labels(kind, by)
        self.screened.labels("quarantined", STORE)
        for t in TYPES:
            for p in PRIORITIES:
                self.work_orders.labels(t, p)
        for status in OUTBOX_STATUSES:
            self.outbox_depth.labels(status)
        for reason in SUPPRESSION_REASONS:
            self.suppressed.labels(reason)
        for reason in ACK_SUPPRESSION_REASONS:
            self.ack_suppressed.labels(reason)
        for target in SLA_TARGETS:
            for state in SLA_STATES:
                self.sla_open.labels(target, state)
        for reason in LOGIN_FAILURES:
            self.login_failures.labels(reason)

    # ---- observations (the lead calls these) --------------------------------------------------
    def observe_outcomes(self, outcomes: Sequence[Outcome]) -> None:
        """Count a batch's outcomes. ``reason`` is read only as a non-request kind, and only
        when it is one of the fixed kinds: quarantine reasons may quote the message."""
        for o in outcomes:
            outcome = _fixed(o.disposition, OUTCOMES)
            kind = _fixed(o.reason, KINDS) if outcome == "non_request" else ""
            self.messages.labels(outcome, kind).inc()
            if outcome == "non_request":
                self.screened.labels(kind, _fixed(o.screened_by, SCREENED_BY, STORE)).inc()
            elif outcome == "quarantined":
                self.screened.labels("quarantined", STORE).inc()

    def observe_work_order(self, request_type: str, priority: str | None, confidence: float,
                           needs_review: bool) -> None:
        self.work_orders.labels(_fixed(request_type, TYPES), _fixed(priority, PRIORITIES)).inc()
        self.confidence.observe(min(1.0, max(0.0, float(confidence))))
        if needs_review:
            self.needs_review.inc()

    def observe_send(self, ok: bool) -> None:
        self.send_attempts.inc()
        (self.send_successes if ok else self.send_failures).inc()

    def observe_suppressed(self, reason: str) -> None:
        self.suppressed.labels(_fixed(reason, SUPPRESSION_REASONS)).inc()

    def observe_login_failure(self, reason: str) -> None:
        self.login_failures.labels(_fixed(reason, LOGIN_FAILURES, "credentials")).inc()

    def observe_ack_suppressed(self, reason: str) -> None:
        self.ack_suppressed.labels(_fixed(reason, ACK_SUPPRESSION_REASONS)).inc()

    def observe_first_response(self, business_hours: float) -> None:
        self.first_response.observe(max(0.0, business_hours))

    def observe_poll(self, mailbox_id: str, seconds: float, ok: bool) -> None:
        mailbox_id = _check_mailbox_id(mailbox_id)
        self.poll_seconds.labels(mailbox_id).observe(max(0.0, seconds))
        if ok:
            self.poll_last_success.labels(mailbox_id).set(time.time())
        else:
            self.poll_failures.labels(mailbox_id).inc()

    def observe_token_request(self, credential: str, outcome: str) -> None:
        self.token_requests.labels(_check_mailbox_id(credential),
                                   _fixed(outcome, TOKEN_OUTCOMES)).inc()

    def observe_credential(self, credential: Credential) -> None:
        """A credential in use: its request counters exist from the start, and its secret's
        end date, when the settings give one, is exposed."""
        name = _check_mailbox_id(credential.name)
        for outcome in TOKEN_OUTCOMES:
            self.token_requests.labels(name, outcome)
        if credential.secret_expires is not None:
            self.credential_expiry.labels(name, "client_secret").set(
                credential.secret_expires.timestamp())

    def observe_refresh_token(self, credential: str, expires_at: datetime) -> None:
        """A refresh token's end of life (issued + the IdP's maximum age)."""
        self.credential_expiry.labels(_check_mailbox_id(credential), "refresh_token").set(
            expires_at.timestamp())

    # ---- gauges from the database ---------------------------------------------------------------
    def refresh_from_db(self, sessions: sessionmaker[Session], *,
                        now: datetime | None = None) -> None:
        """Set the outbox gauges from one aggregate query (status, count, oldest created_at).

        Blocking: call it from a worker thread (the ops app's ``on_scrape`` does)."""
        now = now or datetime.now(UTC)
        q = (select(Outbox.status, func.count(Outbox.id), func.min(Outbox.created_at))
             .where(Outbox.status.in_(OUTBOX_STATUSES))
             .group_by(Outbox.status))
        with sessions() as s:
            rows = s.execute(q).all()
        counts = dict.fromkeys(OUTBOX_STATUSES, 0)
        oldest: datetime | None = None
        for status, count, first in rows:
            counts[status] = int(count)
            if status in ("pending", "sending") and first is not None:
                first = _aware(first)
                oldest = first if oldest is None else min(oldest, first)
        for status, count in counts.items():
            self.outbox_depth.labels(status).set(count)
        age = (now - oldest).total_seconds() if oldest is not None else 0.0
        self.outbox_oldest_age.set(max(0.0, age))
        self._refresh_sla(sessions)

    def _refresh_sla(self, sessions: sessionmaker[Session]) -> None:
        """Per target, unresolved work orders in their worst state (breached beats at risk)."""
        q = (select(SlaAlert.work_order_id, SlaAlert.target, SlaAlert.state)
             .join(WorkOrder, WorkOrder.id == SlaAlert.work_order_id)
             .where(WorkOrder.status != "resolved",
                    SlaAlert.state.in_(SLA_STATES), SlaAlert.target.in_(SLA_TARGETS)))
        with sessions() as s:
            worst: dict[tuple[int, str], str] = {}
            for wo_id, target, state in s.execute(q):
                if worst.get((wo_id, target)) != "breached":
                    worst[(wo_id, target)] = state
        counts = {(t, st): 0 for t in SLA_TARGETS for st in SLA_STATES}
        for (_, target), state in worst.items():
            counts[(target, state)] += 1
        for (target, state), n in counts.items():
            self.sla_open.labels(target, state).set(n)

    # ---- exposition -----------------------------------------------------------------------------
    def exposition(self) -> tuple[bytes, str]:
        """The Prometheus text format and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _aware(value: datetime | str) -> datetime:
    """min() over a SQLite column may come back as text; PostgreSQL gives an aware datetime."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


__all__ = ["KINDS", "LOGIN_FAILURES", "OUTCOMES", "PRIORITIES", "SCREENED_KINDS", "SLA_STATES",
           "SLA_TARGETS", "TYPES", "Metrics"]
