"""The SLA watch: once a minute, warn the team before a promise is broken and when it is.

For every open work order and each of its clocks (callback, email response, fulfil, and the
on-call return call of an urgent 24x7 request received out of hours) it measures the share
of the target used with ``triage.sla.clock_state`` and queues one escalation mail when the
clock crosses ``at_risk_fraction`` and one when it reaches 100 %. "One" is the database's
job, not this process's: each notice is an ``sla_alerts`` row under a UNIQUE(work order,
target, state) key, written in a savepoint together with its outbox row, so a second daemon
(or a rerun after a crash) hits the key and moves on instead of mailing again.

Escalations carry no client-written text except the work-order number and the subject as
``triage.ack.quote_subject`` cuts it: they go to staff, but a subject is still the client's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

from jinja2 import Environment
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from triage import notify
from triage.ack import quote_subject
from triage.calendar import humanize_due
from triage.outbox.enqueue import Mail, enqueue
from triage.sla import STANDARD, SlaPolicy
from triage.slamarks import (
    ONCALL_RETURN,
    ONCALL_WINDOW,
    PAUSED_STATUSES,
    clocks,
    is_paused,
    marks,
    measure,
    out_of_hours_urgent,
    pauses_of,
)
from triage.storage.models import Client, SlaAlert, User, WorkOrder

log = logging.getLogger(__name__)

AT_RISK = "at_risk"
BREACHED = "breached"
PAGED = "paged"
TEMPLATE = "escalation"

_TARGET_LABELS = {
    "callback": "call back",
    "response": "first email response",
    "fulfil": "fulfilment",
    ONCALL_RETURN: "on-call return call",
}
_STATE_LABELS = {AT_RISK: "at risk", BREACHED: "BREACHED", PAGED: "page"}


@dataclass(frozen=True)
class WatchResult:
    """What one run did; ``already`` counts notices another run (or process) had sent."""

    scanned: int = 0
    at_risk: int = 0
    breached: int = 0
    pages: int = 0
    already: int = 0

    @property
    def queued(self) -> int:
        return self.at_risk + self.breached + self.pages


@dataclass(frozen=True)
class _Notice:
    target: str
    state: str
    due: datetime
    fraction: float
    timezone: str


class SlaWatch:
    """Queues escalation and page mails for SLA clocks; run ``run_once`` every minute."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        policy: SlaPolicy,
        clock: Callable[[], datetime],
        *,
        at_risk_fraction: float = 0.75,
        lead_address: str,
        oncall_address: str | None,
        from_domain: str,
        reads: sessionmaker[Session] | None = None,
        webhook: bool = False,
    ) -> None:
        """``webhook``: one is configured; a breach also queues a webhook row (triage.notify)."""
        if not 0.0 < at_risk_fraction < 1.0:
            raise ValueError("at_risk_fraction must be between 0 and 1 (exclusive)")
        if not lead_address:
            raise ValueError("lead_address is required: escalations need a recipient")
        self._sessions = sessions
        self._reads = reads or sessions
        self._policy = policy
        self._clock = clock
        self._at_risk = at_risk_fraction
        self._lead = lead_address
        self._oncall = oncall_address or None
        self._domain = from_domain
        self._standard = policy.calendar(STANDARD)
        self._webhook = webhook

    # ---- the run ---------------------------------------------------------------------------
    def run_once(self) -> WatchResult:
        now = self._clock()
        counts = {AT_RISK: 0, BREACHED: 0, PAGED: 0}
        already = 0
        with self._reads() as s:
            open_ = WorkOrder.status != "resolved"
            rows = list(s.execute(
                select(WorkOrder, Client.domain, User.email)
                .join(Client, Client.id == WorkOrder.client_id)
                .outerjoin(User, User.id == WorkOrder.assignee_id)
                .where(open_, WorkOrder.number.is_not(None))
                .order_by(WorkOrder.id)
            ))
            sent = {tuple(r) for r in s.execute(
                select(SlaAlert.work_order_id, SlaAlert.target, SlaAlert.state)
                .join(WorkOrder, WorkOrder.id == SlaAlert.work_order_id)
                .where(open_)
            )}
        self._fill_marks([wo for wo, _, _ in rows])
        for wo, domain, assignee_email in rows:
            notices = [n for n in self._notices(wo, now)
                       if (wo.id, n.target, n.state) not in sent]
            if not notices:
                continue
            # One short transaction per work order, in a fixed order (id, then target), so
            # two racing watches block on the same first key instead of deadlocking.
            with self._sessions.begin() as s:
                for n in notices:
                    if self._queue(s, wo, domain, n, now, assignee_email or None):
                        counts[n.state] += 1
                    else:
                        already += 1
        result = WatchResult(len(rows), counts[AT_RISK], counts[BREACHED], counts[PAGED],
                             already)
        if result.queued:
            log.info("SLA watch: %d at risk, %d breached, %d paged (%d open work orders)",
                     result.at_risk, result.breached, result.pages, result.scanned)
        return result

    # ---- measuring -------------------------------------------------------------------------
    def _notices(self, wo: WorkOrder, now: datetime) -> Iterator[_Notice]:
        if wo.status in PAUSED_STATUSES or is_paused(wo):
            return  # waiting on the client: the clocks are stopped
        pauses = pauses_of(wo)
        for c in clocks(wo, self._policy):
            state = measure(c, now, pauses)
            tz = c.calendar.tz.key
            if state.fraction_used >= 1.0:
                yield _Notice(c.target, BREACHED, state.due, state.fraction_used, tz)
            elif state.fraction_used >= self._at_risk:
                yield _Notice(c.target, AT_RISK, state.due, state.fraction_used, tz)
        if self._oncall and self._out_of_hours_urgent(wo):
            yield _Notice(ONCALL_RETURN, PAGED, wo.received_at + ONCALL_WINDOW, 0.0,
                          self._standard.tz.key)

    def _out_of_hours_urgent(self, wo: WorkOrder) -> bool:
        return out_of_hours_urgent(wo, self._standard)

    # ---- writing ---------------------------------------------------------------------------
    def _fill_marks(self, rows: list[WorkOrder]) -> None:
        """Compute the queue's SLA marks where they are missing (rows written before
        migration 0003, or by a writer that left them out): the queue needs them to sort."""
        todo = {}
        for wo in rows:
            if wo.next_due is None and wo.status not in PAUSED_STATUSES and not is_paused(wo):
                next_due, at_risk_at = marks(wo, self._policy, self._at_risk)
                if next_due is not None:
                    todo[wo.id] = (next_due, at_risk_at)
        if not todo:
            return
        with self._sessions.begin() as s:
            for wo_id, (next_due, at_risk_at) in todo.items():
                s.execute(update(WorkOrder).where(WorkOrder.id == wo_id,
                                                  WorkOrder.next_due.is_(None))
                          .values(next_due=next_due, at_risk_at=at_risk_at))
        log.info("SLA watch: queue marks filled in for %d work orders", len(todo))

    def _queue(self, s: Session, wo: WorkOrder, domain: str, n: _Notice, now: datetime,
               assignee: str | None = None) -> bool:
        """Alert row + outbox row in one savepoint; False when the key was already taken.

        Escalations go to the assignee when there is one (with an address), else the lead;
        pages go to on-call."""
        try:
            with s.begin_nested():
                alert = SlaAlert(work_order_id=wo.id, target=n.target, state=n.state,
                                 created_at=now)
                s.add(alert)
                s.flush()  # the unique key is checked here (PostgreSQL waits for a racer)
                paged = n.state == PAGED
                kind = "page" if paged else "escalation"
                to = self._oncall if paged and self._oncall else (assignee or self._lead)
                # Numbered by the alert, so one notice has one Message-ID.
                (alert.outbox_id,) = enqueue(s.connection(), [Mail(
                    kind=kind, work_order_id=wo.id, number=str(wo.number), to_addr=to,
                    template=TEMPLATE, context=_context(wo, domain, n, kind, now),
                    serial=alert.id)], domain=self._domain, now=now)
                if n.state == BREACHED and self._webhook:
                    enqueue(s.connection(), [notify.breached(wo, domain, n.target, n.due, now)],
                            domain=self._domain, now=now)
        except IntegrityError:
            log.debug("SLA notice %s/%s/%s already queued", wo.number, n.target, n.state)
            return False
        log.info("SLA %s: work order %s, %s due %s", n.state, wo.number, n.target,
                 n.due.isoformat())
        return True


def _context(wo: WorkOrder, domain: str, n: _Notice, kind: str, now: datetime) -> dict[str, Any]:
    """Everything ``render_escalation`` needs, so rendering never reads the work order."""
    return {
        "kind": kind,
        "number": wo.number,
        "request_type": wo.request_type,
        "priority": wo.priority,
        "contract": wo.contract,
        "client_domain": domain,
        "subject": quote_subject(wo.subject or ""),
        "target": n.target,
        "state": n.state,
        "due": n.due.astimezone(UTC).isoformat(),
        "percent": round(n.fraction * 100),
        "received": wo.received_at.astimezone(UTC).isoformat(),
        "timezone": n.timezone,
        "at": now.astimezone(UTC).isoformat(),
    }


def escalation_subject(ctx: Mapping[str, Any]) -> str:
    number = ctx["number"]
    if ctx["state"] == PAGED:
        return f"[{number}] PAGE: urgent 24x7 request received out of hours"
    target = _TARGET_LABELS.get(ctx["target"], str(ctx["target"]))
    return f"[{number}] SLA {_STATE_LABELS.get(ctx['state'], ctx['state'])}: {target}"


def render_escalation(
    env: Environment,
    row_context: Mapping[str, Any],
    message_id: str,
    to_addr: str,
    from_address: str,
) -> EmailMessage:
    """An escalation or page mail from an outbox row's ``context`` (plain text only)."""
    ctx = dict(row_context)
    due = datetime.fromisoformat(ctx["due"])
    received = datetime.fromisoformat(ctx["received"])
    text = env.get_template("email/escalation.txt.j2").render(
        number=ctx["number"],
        page=ctx["state"] == PAGED,
        state=ctx["state"],
        state_label=_STATE_LABELS.get(ctx["state"], ctx["state"]),
        target_label=_TARGET_LABELS.get(ctx["target"], ctx["target"]),
        request_type=str(ctx["request_type"]).replace("_", " "),
        priority=ctx["priority"],
        contract=ctx["contract"],
        client_domain=ctx["client_domain"],
        subject=quote_subject(str(ctx.get("subject") or "")),
        due=humanize_due(due, ctx["timezone"]),
        due_iso=due.isoformat(),
        received=humanize_due(received, ctx["timezone"])[3:],  # without the leading "by "
        percent=ctx["percent"],
    )
    msg = EmailMessage()
    msg["From"] = formataddr(("ITX Triage", from_address))
    msg["To"] = to_addr
    msg["Subject"] = escalation_subject(ctx)
    msg["Date"] = format_datetime(datetime.fromisoformat(ctx["at"]))
    msg["Message-ID"] = f"<{message_id}>"
    msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no autoreply should answer it
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-ITX-Work-Order"] = str(ctx["number"])
    if ctx["state"] == PAGED:
        msg["Importance"] = "high"
        msg["X-Priority"] = "1"
    msg.set_content(text)
    return msg


__all__ = ["SlaWatch", "WatchResult", "escalation_subject", "render_escalation"]
