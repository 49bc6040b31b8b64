"""Merging two work orders of one client: the later one's thread joins the earlier.

The survivor is the earlier (by arrival, then id). Its thread takes the client messages of
the later one (and of any merged into that one before), so search, attachments, history
and the reply's threading see one conversation; our mail stays on the row it was written
for and is shown in the survivor's thread (``triage.desk.queue``). The later one is
resolved with ``merged_into_id`` set: its number still resolves and its page points on, its
SLA clocks stop (the SLA watch reads only open work orders), further actions on it are
refused, and mail answering it threads into the survivor (``triage.store.context``).

Both rows are locked in id order (two merges of the same pair cannot deadlock), both get an
audit event and a new version, and a page's version guards the work order it showed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from triage.desk.actions import ActionError, Desk, NotFound
from triage.slamarks import end_pause
from triage.storage.models import Client, Message, WorkOrder
from triage.store.model import UNKNOWN_CLIENT


@dataclass(frozen=True)
class Merged:
    survivor: str  # the number that carries the thread on
    merged: str  # the number closed with a pointer
    messages: int  # client messages moved


def merge(desk: Desk, number: str, other: str, actor: str, *,
          version: int | None = None) -> Merged:
    """Merge ``number`` (the page's work order; ``version``: the one its page showed) and
    ``other``; whichever arrived later joins the earlier. Raises ``NotFound``, ``Conflict``
    or ``ActionError`` (different clients, the same work order, one merged already)."""
    other = other.strip().upper()
    if other == number:
        raise ActionError("a work order cannot be merged with itself")
    now = desk._clock()
    with desk._sessions.begin() as s:
        ids = {str(n): int(i) for n, i in s.execute(
            select(WorkOrder.number, WorkOrder.id).where(WorkOrder.number.in_((number, other))))}
        if number not in ids:
            raise NotFound(number)
        if other not in ids:
            raise ActionError(f"no work order {other}")
        # Locked in id order: two merges naming the same pair either way round queue up.
        locked = {n: desk._locked(s, n, version if n == number else None)
                  for n in sorted(ids, key=lambda n: ids[n])}
        a, b = locked[number], locked[other]
        _refuse(s, a, b)
        first, later = sorted((a, b), key=lambda w: (w.received_at, w.id))
        moved = s.connection().execute(update(Message).where(Message.work_order_id == later.id)
                                       .values(work_order_id=first.id)).rowcount
        # One step from any merged work order to an open one: repoint those merged before.
        s.execute(update(WorkOrder).where(WorkOrder.merged_into_id == later.id)
                  .values(merged_into_id=first.id))
        later.merged_into_id = first.id
        was = later.status
        end_pause(later, now)
        later.status, later.resolved_at = "resolved", now
        desk._marks(later)
        desk._event(s, later, actor, "merged_into",
                    {"into": first.number, "was": was, "messages": moved}, now)
        desk._event(s, first, actor, "merged",
                    {"from": later.number, "messages": moved}, now)
        return Merged(str(first.number), str(later.number), moved)


def _refuse(s: Session, a: WorkOrder, b: WorkOrder) -> None:
    """Refuse two clients' work orders (one merged already is refused by ``_locked``)."""
    if a.client_id != b.client_id:
        raise ActionError(f"{a.number} and {b.number} are of different clients; only work "
                          "orders of the same client can be merged")
    key = s.scalar(select(Client.domain).where(Client.id == a.client_id))
    # Senders without a usable domain share one client row but are not one client.
    if key == UNKNOWN_CLIENT and (not a.requester or a.requester.lower() != b.requester.lower()):
        raise ActionError(f"{a.number} and {b.number} have senders of no known client; "
                          "only work orders of the same client can be merged")


__all__ = ["Merged", "merge"]
