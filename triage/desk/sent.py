"""The words of an acknowledgment, for the work-order page.

An acknowledgment is rendered when it is sent, from its outbox row and the work order's
values then (``triage.ack.ack_view``); nothing of the mail is stored but those inputs.
The page renders it again the same way, with the work order as it was at the send: a
reclassification after it (new type, priority, due dates) is undone from its audit event's
``was_type``/``was_priority``, and the due dates are computed again from the arrival time, as
the reclassification computed its own. So a page shows what the client was told, not what
the work order says today.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jinja2 import Environment

from triage.ack import ack_view, make_env, render_ack_text
from triage.sla import SlaPolicy
from triage.storage.models import Event, Outbox, WorkOrder


@dataclass(frozen=True)
class _AsSent:
    """The work-order values an acknowledgment reads."""

    number: str
    request_type: str
    priority: str
    contract: str
    response_due: datetime
    callback_due: datetime | None
    fulfil_due: datetime | None
    milestones: list[Any]
    requester_name: str


class SentAcks:
    def __init__(self, policy: SlaPolicy, *, from_address: str, phone: str,
                 env: Environment | None = None) -> None:
        self._policy = policy
        self._from = from_address
        self._phone = phone
        self._env = env or make_env()

    def as_sent(self, row: Outbox, wo: WorkOrder, events: Sequence[Event]) -> _AsSent:
        """The work order's values when ``row`` was rendered (sent, or else now)."""
        values = _AsSent(wo.number or "", wo.request_type, wo.priority, wo.contract,
                         wo.response_due, wo.callback_due, wo.fulfil_due,
                         list(wo.milestones or []), wo.requester_name or "")
        sent = row.sent_at
        later = [e for e in events if e.action == "reclassified" and sent is not None
                 and e.at > sent]
        if not later:
            return values
        first = min(later, key=lambda e: (e.at, e.id))
        rtype = str(first.detail.get("was_type") or wo.request_type)
        priority = str(first.detail.get("was_priority") or wo.priority)
        if (rtype not in self._policy.types or priority not in self._policy.priorities
                or (rtype, priority) == (wo.request_type, wo.priority)):
            return values
        due = self._policy.due(rtype, priority, wo.contract, wo.received_at)
        return _AsSent(values.number, rtype, priority, wo.contract, due.response_due,
                       due.callback_due, due.fulfil_due,
                       [{"name": n, "due": t.isoformat()} for n, t in due.milestones],
                       values.requester_name)

    def text(self, row: Outbox, wo: WorkOrder, events: Sequence[Event]) -> str:
        """The plain-text part of the acknowledgment ``row``, as the client got it."""
        v = self.as_sent(row, wo, events)
        tz = self._policy.calendar(v.contract).tz.key
        view = ack_view(row, v, timezone=tz,
                        priority_meaning=self._policy.priority_meaning(v.priority),
                        fulfil_within=self._policy.fulfil_in_words(v.request_type, v.priority))
        return render_ack_text(self._env, view, from_address=self._from, phone=self._phone)


__all__ = ["SentAcks"]
