"""Due dates and queue marks of a new work order, which depend only on its type, priority,
contract and arrival: worked out once per combination, and for most of a batch before the
write transaction begins (``WorkOrderStore.prepare``). On SQLite that transaction holds the
database's only write lock, which the outbox needs for every mail it records as sent."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from triage.messages import DueDates
from triage.sla import SlaPolicy
from triage.slamarks import apply_marks
from triage.store.context import WorkOrderView

Figures = tuple[DueDates, datetime | None, datetime | None]  # due dates, next_due, at_risk_at


def due_columns(due: DueDates) -> dict[str, Any]:
    """A new work order's SLA columns: what its row holds and its queue marks read."""
    return dict(clock_start=due.clock_start, response_due=due.response_due,
                callback_due=due.callback_due, fulfil_due=due.fulfil_due,
                milestones=[{"name": n, "due": t.isoformat()} for n, t in due.milestones])


class SlaFigures:
    def __init__(self, policy: SlaPolicy, at_risk_fraction: float) -> None:
        self.policy, self.at_risk_fraction = policy, at_risk_fraction
        self._known: dict[tuple[str, str, str, datetime], Figures] = {}

    def get(self, label: str, priority: str, contract: str, received: datetime) -> Figures:
        """Raises what the policy raises for a type, priority or contract it cannot serve."""
        key = (label, priority, contract, received)
        known = self._known.get(key)
        if known is None:
            due = self.policy.due(label, priority, contract, received)
            view = WorkOrderView(dict(
                status="new", pauses=[], contract=contract, priority=priority,
                request_type=label, received_at=received, **due_columns(due)))
            apply_marks(view, self.policy, self.at_risk_fraction)  # type: ignore[arg-type]
            known = self._known[key] = (due, view.next_due, view.at_risk_at)
        return known
