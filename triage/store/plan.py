"""A plan: the rows one message's decision writes, and the outcome it reports.

The decision step (``decide``) makes plans; the writers (``write_bulk``, ``write_careful``)
carry them out and never decide anything. A row another row points to before it exists
(a new work order its message and events belong to, a new client) is a ``Ref`` that the
writer fills with the id its insert returns.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from triage.store.model import Outcome, format_number

log = logging.getLogger("triage.store")


class Ref:
    """The id of a row planned but not inserted yet."""

    __slots__ = ("id",)

    def __init__(self) -> None:
        self.id: int | None = None

    def get(self) -> int:
        assert self.id is not None, "row not inserted yet"
        return self.id


RowId = Ref | int


def resolve(v: RowId | None) -> int | None:
    return v.get() if isinstance(v, Ref) else v


@dataclass
class NewClient:
    ref: Ref
    key: str  # clients.domain
    contract: str


@dataclass
class NewWorkOrder:
    ref: Ref
    client: RowId
    values: dict[str, Any]  # every column but id, client_id and number


@dataclass
class NewMessage:
    ref: Ref
    work_order: RowId | None
    values: dict[str, Any]  # every column but id and work_order_id
    raw: bytes
    truncated: bool  # only the head was kept (oversize)
    attachments: list[dict[str, Any]]  # attachment rows but message_pk (files already saved)


@dataclass
class NewFetch:
    mailbox: str
    uidvalidity: int
    uid: str
    message: RowId
    duplicate: bool
    at: datetime


@dataclass
class NewEvent:
    work_order: RowId | None
    action: str
    detail: dict[str, Any]  # a ``Ref`` in it is written as its id
    at: datetime
    actor: str = "system"
    # The work order's version the event produced (a client's reply); None for events that
    # change nothing a technician acts on (creation, suppressions), which never refuse a page.
    wo_version: int | None = None


@dataclass
class WorkOrderChange:
    """An existing work order's new state (a reply reopened or resumed it)."""

    work_order_id: int
    values: dict[str, Any]  # the columns in decide._CHANGED


@dataclass
class NewMail:
    """An outbox row for ``triage.outbox.enqueue`` once its work order has an id."""

    kind: str
    work_order: RowId
    to_addr: str
    template: str
    # A "number" given as None becomes the work order's number once written.
    context: dict[str, Any]
    # A staff notification's unique key (triage.notify); "{wo}" in it becomes the work
    # order's id once written.
    notify_key: str | None = None


@dataclass
class Plan:
    """Everything one message makes the store write; empty lists write nothing."""

    outcome: Outcome  # ``work_order`` is filled in from ``new_work_order`` once written
    client: NewClient | None = None
    new_work_order: NewWorkOrder | None = None
    message: NewMessage | None = None
    fetch: NewFetch | None = None
    events: list[NewEvent] = field(default_factory=list)
    changes: list[WorkOrderChange] = field(default_factory=list)
    mails: list[NewMail] = field(default_factory=list)
    logs: list[tuple[int, str, tuple[Any, ...]]] = field(default_factory=list)

    def result(self) -> Outcome:
        """The outcome as reported, after the rows are written."""
        if self.new_work_order is not None and self.outcome.work_order is None:
            return dataclasses.replace(
                self.outcome, work_order=format_number(self.new_work_order.ref.get()))
        return self.outcome

    def emit_logs(self) -> None:
        """Log lines are written once the rows are, so they can name the work order."""
        for level, fmt, args in self.logs:
            log.log(level, fmt, *(a() if callable(a) else a for a in args))
