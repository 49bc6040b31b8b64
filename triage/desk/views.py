"""Saved views: a technician's named queue filters, listed in the navigation with counts, and
the two every user has without saving ("Mine", "Unassigned urgent").

A view is kept as the queue's own query arguments (``QueueFilter.query_args``), so opening a
view is following a link to the queue, and the queue page needs nothing view-specific. The
arguments are checked against the policy when a view is saved and again when it is read (a
request type removed from the policy since makes that view say so, not fail the page).

Counting is one query per view, each as the queue counts its own total: over the active work
orders a view's filter reads a range of an index, no table row (``ix_work_orders_active_due``,
``_counts`` of migration 0004, ``_assignee`` of 0016 for the assignee filters the defaults
use). ``MAX_VIEWS`` bounds the counts a page makes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from triage.desk.actions import ActionError, NotFound
from triage.desk.queue import ACTIVE, SLA_FILTERS, STATUS_FILTERS, QueueFilter
from triage.sla import SlaPolicy
from triage.storage.models import SavedView, WorkOrder

MAX_VIEWS = 15  # per user: every page counts each of them (bench/bench_views.py)
MAX_NAME = 64
MINE, UNASSIGNED_URGENT = "Mine", "Unassigned urgent"
DEFAULT_NAMES = (MINE, UNASSIGNED_URGENT)
# The query arguments a view may hold, with their longest accepted value (as the queue's).
ARG_LIMITS = {"type": 64, "priority": 64, "status": 64, "assignee": 64, "review": 8,
              "sla": 64, "q": 200}


class ViewError(ActionError):
    """The view cannot be saved or changed as asked; the message says why."""


class ViewNameTaken(ViewError):
    """The user has a view of that name already (or it is a default's)."""


@dataclass(frozen=True)
class View:
    id: int | None  # None: one of the defaults
    name: str
    args: dict[str, str]  # the queue's query arguments
    count: int | None = None  # None: not counted (or the view no longer fits the policy)
    problem: str = ""  # why the view cannot be shown, if it cannot

    @property
    def href(self) -> str:
        return "/queue" + ("?" + urlencode(self.args) if self.args else "")

    @property
    def default(self) -> bool:
        return self.id is None


def default_views(user_name: str) -> list[View]:
    return [View(None, MINE, {"assignee": user_name}),
            View(None, UNASSIGNED_URGENT, {"priority": "urgent", "assignee": "none"})]


def filter_from_args(args: Mapping[str, str], policy: SlaPolicy) -> QueueFilter:
    """The queue filter of a view's arguments, checked as the queue checks its own."""
    unknown = sorted(set(args) - set(ARG_LIMITS))
    if unknown:
        raise ViewError(f"not a queue filter: {', '.join(k[:20] for k in unknown[:5])}")
    for key, value in args.items():
        if not isinstance(value, str) or len(value) > ARG_LIMITS[key]:
            raise ViewError(f"the {key} filter is at most {ARG_LIMITS[key]} characters")

    def known(key: str, allowed: tuple[str, ...]) -> str | None:
        value = args.get(key) or None
        if value is not None and value not in allowed:
            raise ViewError(f"unknown {key} {value!r}")
        return value

    review = args.get("review") or None
    if review not in (None, "yes", "no"):
        raise ViewError(f"unknown review {review!r}")
    return QueueFilter(
        request_type=known("type", policy.types), priority=known("priority", policy.priorities),
        status=known("status", STATUS_FILTERS) or ACTIVE,
        assignee=args.get("assignee") or None,
        needs_review=None if review is None else review == "yes",
        sla=known("sla", SLA_FILTERS), q=(args.get("q") or "").strip() or None)


def args_of(f: QueueFilter) -> dict[str, str]:
    """A filter as a view keeps it: its query arguments, without the page."""
    return f.query_args()


def total_statement(s: Session, f: QueueFilter, now: datetime) -> Select[int]:
    """The count of the work orders the queue shows for ``f`` (its ``total``)."""
    from triage.desk import search
    from triage.desk.queue import _NUMBERED, _where

    stmt = select(func.count()).select_from(WorkOrder)
    if search.is_text_search(f.q):
        h = search.hits(s, search.terms(f.q or ""))
        stmt, f = stmt.join(h, h.c.wid == WorkOrder.id), replace(f, q=None)
    return _where(stmt, f, now).where(_NUMBERED)


def queue_total(s: Session, f: QueueFilter, now: datetime) -> int:
    return s.scalar(total_statement(s, f, now)) or 0


def saved_views(s: Session, user_id: int) -> list[SavedView]:
    return list(s.scalars(select(SavedView).where(SavedView.user_id == user_id)
                          .order_by(func.lower(SavedView.name), SavedView.id)))


def user_views(s: Session, user_id: int, user_name: str) -> list[View]:
    """The defaults, then the user's saved views by name; not counted."""
    return default_views(user_name) + [View(v.id, v.name, dict(v.filters or {}))
                                       for v in saved_views(s, user_id)]


def counted(s: Session, views: list[View], policy: SlaPolicy, now: datetime) -> list[View]:
    """The views with their counts; a view whose filter no longer fits the policy gets its
    problem instead."""
    out = []
    for v in views:
        try:
            f = filter_from_args(v.args, policy)
        except ViewError as e:
            out.append(replace(v, problem=str(e)))
            continue
        out.append(replace(v, count=queue_total(s, f, now)))
    return out


def navigation(s: Session, user_id: int, user_name: str, policy: SlaPolicy,
               now: datetime) -> list[View]:
    """What the navigation lists for a user: every view, counted."""
    return counted(s, user_views(s, user_id, user_name), policy, now)


def _clean_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ViewError("a view needs a name")
    if len(name) > MAX_NAME:
        raise ViewError(f"a view's name is at most {MAX_NAME} characters")
    return name


def _check_free(s: Session, user_id: int, name: str, keep: int | None = None) -> None:
    taken = {n.lower() for n in DEFAULT_NAMES}
    taken |= {v.name.lower() for v in saved_views(s, user_id) if v.id != keep}
    if name.lower() in taken:
        raise ViewNameTaken(f"you already have a view named {name!r}")


def _flush(s: Session, name: str) -> None:
    """The unique (user, name) constraint decides a race the check above could not see."""
    try:
        with s.begin_nested():
            s.flush()
    except IntegrityError:
        raise ViewNameTaken(f"you already have a view named {name!r}") from None


def save_view(s: Session, user_id: int, name: str, args: Mapping[str, str],
              policy: SlaPolicy) -> SavedView:
    """A new view of ``args`` (the queue's query arguments) under ``name``."""
    name = _clean_name(name)
    f = filter_from_args(args, policy)
    _check_free(s, user_id, name)
    if len(saved_views(s, user_id)) >= MAX_VIEWS:
        raise ViewError(f"at most {MAX_VIEWS} saved views each: delete one first")
    view = SavedView(user_id=user_id, name=name, filters=args_of(f))
    s.add(view)
    _flush(s, name)
    return view


def own_view(s: Session, user_id: int, view_id: int) -> SavedView:
    """The user's view; another user's is as missing as one that never was."""
    view = s.scalar(select(SavedView).where(SavedView.id == view_id,
                                            SavedView.user_id == user_id))
    if view is None:
        raise NotFound(f"view {view_id}")
    return view


def change_view(s: Session, user_id: int, view_id: int, policy: SlaPolicy, *,
                name: str | None = None, args: Mapping[str, str] | None = None) -> SavedView:
    """Rename a view, or give it another filter, or both."""
    view = own_view(s, user_id, view_id)
    if name is not None:
        name = _clean_name(name)
        _check_free(s, user_id, name, keep=view.id)
        view.name = name
    if args is not None:
        view.filters = args_of(filter_from_args(args, policy))
    _flush(s, view.name)
    return view


def delete_view(s: Session, user_id: int, view_id: int) -> None:
    s.delete(own_view(s, user_id, view_id))


def view_json(v: View) -> dict[str, Any]:
    return {"id": v.id, "name": v.name, "default": v.default, "filters": v.args,
            "href": v.href, "count": v.count, "problem": v.problem or None}


__all__ = ["DEFAULT_NAMES", "MAX_VIEWS", "MINE", "UNASSIGNED_URGENT", "View", "ViewError",
           "ViewNameTaken", "args_of", "change_view", "counted", "default_views",
           "delete_view", "filter_from_args", "navigation", "own_view", "queue_total",
           "save_view", "saved_views", "total_statement", "user_views", "view_json"]
