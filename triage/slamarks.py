"""The SLA clocks of one work order, and the two marks the queue sorts and filters on.

One place decides which clocks a work order has (call back, first email response, fulfil,
and the on-call return call of an urgent 24x7 request received out of hours), on which
calendar each runs, and how waiting-on-client pauses move them. The SLA watch measures these
clocks every minute; the staff queue cannot (100,000 rows), so each write that changes a
clock stores ``next_due`` (the nearest due, pauses included) and ``at_risk_at`` (the
earliest instant a clock crosses the at-risk share) on the row, and SQL compares them with
now: breached when ``next_due <= now``, at risk when ``at_risk_at <= now``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from triage.calendar import BusinessCalendar, Pause
from triage.sla import STANDARD, ClockState, SlaPolicy, clock_state, moved_due
from triage.storage.models import WorkOrder

log = logging.getLogger(__name__)

ONCALL_RETURN = "oncall_return"
ONCALL_WINDOW = timedelta(hours=1)  # the on-call engineer calls back within 1 h, wall clock
CONTRACT_24X7 = "24x7"
CLOSED_STATUSES = frozenset({"resolved"})
PAUSED_STATUSES = frozenset({"waiting_client"})

ON_TRACK = "on_track"
AT_RISK = "at_risk"
BREACHED = "breached"
PAUSED = "paused"
CLOSED = "closed"
SLA_STATES = (ON_TRACK, AT_RISK, BREACHED, PAUSED, CLOSED)


@dataclass(frozen=True)
class Clock:
    target: str  # callback | response | fulfil | oncall_return
    start: datetime
    due: datetime
    calendar: BusinessCalendar


def pauses_of(wo: WorkOrder) -> list[Pause]:
    """The stored pauses as datetimes; an open pause (still waiting) has ``None`` as its end."""
    out: list[Pause] = []
    for begin, end in wo.pauses or ():
        out.append((datetime.fromisoformat(begin),
                    datetime.fromisoformat(end) if end else None))
    return out


def start_pause(wo: WorkOrder, now: datetime) -> None:
    if not is_paused(wo):
        wo.pauses = [*(wo.pauses or []), [now.astimezone(UTC).isoformat(), None]]


def end_pause(wo: WorkOrder, now: datetime) -> None:
    wo.pauses = [[b, e if e else now.astimezone(UTC).isoformat()] for b, e in wo.pauses or []]


def is_paused(wo: WorkOrder) -> bool:
    return any(end is None for _, end in wo.pauses or ())


def out_of_hours_urgent(wo: WorkOrder, standard: BusinessCalendar) -> bool:
    """Urgent, 24x7 contract, unanswered, and nobody was in the office when it came in."""
    return (wo.priority == "urgent" and wo.contract == CONTRACT_24X7
            and wo.first_response_at is None
            and not standard.is_open(wo.received_at))


def contract_calendar(policy: SlaPolicy, contract: str) -> BusinessCalendar:
    try:
        return policy.calendar(contract)
    except ValueError:
        log.warning("unknown contract %r; standard calendar used", contract)
        return policy.calendar(STANDARD)


def clocks(wo: WorkOrder, policy: SlaPolicy) -> Iterator[Clock]:
    """The clocks still running for ``wo``: the response clock stops at the first reply,
    the call-back clock when staff log the call."""
    cal = contract_calendar(policy, wo.contract)
    try:
        targets = policy.targets(wo.request_type, wo.priority)
    except ValueError:  # a type or priority the policy no longer knows: its calendar
        log.warning("work order %s: %s/%s not in the SLA policy; contract calendar used",
                    wo.number, wo.request_type, wo.priority)
        targets = {}

    def calendar(name: str) -> BusinessCalendar:
        t = targets.get(name)
        if t is None or wo.contract not in policy.calendars:
            return cal
        return policy.clock_calendar(t, wo.contract)

    if wo.callback_due is not None and wo.called_back_at is None:
        yield Clock("callback", wo.clock_start, wo.callback_due, calendar("callback"))
    if wo.first_response_at is None:
        yield Clock("response", wo.clock_start, wo.response_due, calendar("response"))
    if wo.fulfil_due is not None:
        yield Clock("fulfil", wo.clock_start, wo.fulfil_due, calendar("fulfil"))
    standard = policy.calendar(STANDARD)
    if out_of_hours_urgent(wo, standard):
        yield Clock(ONCALL_RETURN, wo.received_at, wo.received_at + ONCALL_WINDOW,
                    BusinessCalendar.always_open(standard.tz, "wall"))


def measure(clock: Clock, now: datetime, pauses: Sequence[Pause] = ()) -> ClockState:
    return clock_state(clock.start, clock.due, now, clock.calendar, pauses)


def marks(
    wo: WorkOrder, policy: SlaPolicy, at_risk_fraction: float
) -> tuple[datetime | None, datetime | None]:
    """``(next_due, at_risk_at)`` for ``wo``: both None while resolved or paused."""
    if wo.status in CLOSED_STATUSES or is_paused(wo) or wo.status in PAUSED_STATUSES:
        return None, None
    pauses = pauses_of(wo)
    dues: list[datetime] = []
    risks: list[datetime] = []
    for c in clocks(wo, policy):
        target = c.calendar.business_time_between(c.start, c.due)
        if target <= timedelta(0):
            dues.append(c.due)
            risks.append(c.due)
            continue
        dues.append(moved_due(c.start, c.due, c.calendar, pauses, target))
        risks.append(c.calendar.add_business_time(c.start, target * at_risk_fraction, pauses))
    if not dues:
        return None, None
    return min(dues), min(risks)


def apply_marks(wo: WorkOrder, policy: SlaPolicy, at_risk_fraction: float) -> None:
    wo.next_due, wo.at_risk_at = marks(wo, policy, at_risk_fraction)


def sla_state(wo: WorkOrder, now: datetime) -> str:
    """The queue's state of ``wo`` from its stored marks (the same rule the SQL filter uses)."""
    if wo.status in CLOSED_STATUSES:
        return CLOSED
    if wo.status in PAUSED_STATUSES or is_paused(wo):
        return PAUSED
    if wo.next_due is not None and wo.next_due <= now:
        return BREACHED
    if wo.at_risk_at is not None and wo.at_risk_at <= now:
        return AT_RISK
    return ON_TRACK


__all__ = [
    "AT_RISK", "BREACHED", "CLOSED", "ON_TRACK", "PAUSED", "SLA_STATES", "Clock",
    "apply_marks", "clocks", "contract_calendar", "end_pause", "is_paused", "marks", "measure",
    "out_of_hours_urgent", "pauses_of", "sla_state", "start_pause",
]
