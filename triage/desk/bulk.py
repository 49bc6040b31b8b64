"""Bulk actions on queue rows: assign, reclassify, change status, resolve.

Each row is the single action of ``triage.desk.actions.Desk`` on its own, in its own
transaction: the same checks, one audit event, the work order's version raised, and the
collision guard against the version the queue page showed for that row. So a bulk action is
not all or nothing: a row changed by someone else since the page was loaded is refused (and
says what changed), the others go through, and the result tells what happened to each row.
What is wrong for every row alike (an unknown user, type or status, no rows, too many) is
refused before any row is touched.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from triage.desk.actions import STATUSES, ActionError, Conflict, Desk, NotFound
from triage.sla import SlaPolicy
from triage.storage.models import User, WorkOrder

log = logging.getLogger(__name__)

MAX_ROWS = 200
ACTIONS = ("assign", "reclassify", "status", "resolve")
# A selected row as the queue page sends it: the number and the version the page showed.
_TARGET = re.compile(r"^(ITX-\d{6,12})(?:@(\d{1,10}))?$")
Outcome = Literal["done", "unchanged", "conflict", "not_found", "refused", "failed"]


class BulkError(ActionError):
    """The bulk action as a whole cannot be done; no row was touched."""


@dataclass(frozen=True)
class Target:
    number: str
    version: int | None = None  # None: no collision guard (an API script that sends none)


@dataclass(frozen=True)
class RowResult:
    number: str
    outcome: Outcome
    message: str = ""
    version: int | None = None  # the work order's version afterwards, when it exists

    @property
    def ok(self) -> bool:
        return self.outcome in ("done", "unchanged")


@dataclass(frozen=True)
class BulkResult:
    action: str
    rows: list[RowResult]

    @property
    def done(self) -> int:
        return sum(r.outcome == "done" for r in self.rows)

    @property
    def failed(self) -> int:
        return sum(not r.ok for r in self.rows)


def parse_target(value: str) -> Target:
    """``ITX-000123@4`` (number and version) or ``ITX-000123``."""
    m = _TARGET.match(value.strip())
    if m is None:
        raise BulkError(f"not a work order: {value[:40]!r}")
    version = int(m.group(2)) if m.group(2) else None
    if version is not None and not 1 <= version < 2**31:
        raise BulkError(f"not a version: {m.group(2)}")
    return Target(m.group(1), version)


@dataclass(frozen=True)
class BulkAction:
    """What to do to every row; ``check`` refuses a request that is wrong as a whole."""

    action: str
    assignee: str | None = None  # assign: a user name, or None to unassign
    request_type: str | None = None  # reclassify: None keeps each row's type
    priority: str | None = None  # reclassify: None keeps each row's priority
    status: str | None = None  # status

    def check(self, sessions: sessionmaker[Session], policy: SlaPolicy,
              targets: Sequence[Target]) -> None:
        if self.action not in ACTIONS:
            raise BulkError(f"unknown bulk action {self.action[:40]!r}")
        if not targets:
            raise BulkError("no work orders selected")
        if len(targets) > MAX_ROWS:
            raise BulkError(f"at most {MAX_ROWS} work orders per bulk action "
                            f"({len(targets)} selected)")
        if self.action == "reclassify":
            if self.request_type is None and self.priority is None:
                raise BulkError("choose a request type, a priority or both")
            if self.request_type is not None and self.request_type not in policy.types:
                raise BulkError(f"unknown request type {self.request_type[:64]!r}")
            if self.priority is not None and self.priority not in policy.priorities:
                raise BulkError(f"unknown priority {self.priority[:64]!r}")
        if self.action == "status" and self.status is None:
            raise BulkError("choose a status")
        if self.action == "status" and self.status not in STATUSES:
            raise BulkError(f"unknown status {str(self.status)[:32]!r}")
        if self.action == "assign" and self.assignee:
            with sessions() as s:
                if s.scalar(select(User.id).where(User.name == self.assignee,
                                                  User.active)) is None:
                    raise BulkError(f"no active staff user {self.assignee[:64]!r}")


def run_bulk(desk: Desk, sessions: sessionmaker[Session], policy: SlaPolicy, actor: str,
             todo: BulkAction, targets: Sequence[Target]) -> BulkResult:
    """``todo`` on every target in turn, each in its own transaction; a row's failure is
    reported for that row and the next one goes ahead."""
    todo.check(sessions, policy, targets)
    first: dict[str, Target] = {}
    for t in targets:  # a number sent twice is done once, with the first version sent
        first.setdefault(t.number, t)
    unique = list(first.values())
    with sessions() as s:
        current = {r.number: r for r in s.execute(
            select(WorkOrder.number, WorkOrder.version, WorkOrder.request_type,
                   WorkOrder.priority).where(WorkOrder.number.in_([t.number for t in unique])))}
    rows: list[RowResult] = []
    for t in unique:
        now = current.get(t.number)
        if now is None:
            rows.append(RowResult(t.number, "not_found", "no such work order"))
            continue
        # Without a version from the page, the one just read: a reclassify that keeps a
        # row's type or priority then keeps the value it read, or is refused.
        version = t.version if t.version is not None else now.version
        try:
            if todo.action == "assign":
                wo = desk.assign(t.number, actor, todo.assignee, version=version)
            elif todo.action == "reclassify":
                wo = desk.reclassify(t.number, actor, todo.request_type or now.request_type,
                                     todo.priority or now.priority, version=version)
            elif todo.action == "status":
                assert todo.status is not None
                wo = desk.set_status(t.number, actor, todo.status, version=version)
            else:
                wo = desk.resolve(t.number, actor, version=version)
        except Conflict as e:
            rows.append(RowResult(t.number, "conflict", str(e), e.current))
        except NotFound:
            rows.append(RowResult(t.number, "not_found", "no such work order"))
        except ActionError as e:
            rows.append(RowResult(t.number, "refused", str(e), now.version))
        except SQLAlchemyError:
            log.exception("bulk %s of %s failed", todo.action, t.number)
            rows.append(RowResult(t.number, "failed", "a database error (see the log); "
                                  "nothing was changed on this work order"))
        else:
            changed = wo.version != version
            rows.append(RowResult(t.number, "done" if changed else "unchanged",
                                  "" if changed else "already so", wo.version))
    return BulkResult(todo.action, rows)


__all__ = ["ACTIONS", "MAX_ROWS", "BulkAction", "BulkError", "BulkResult", "RowResult",
           "Target", "parse_target", "run_bulk"]
