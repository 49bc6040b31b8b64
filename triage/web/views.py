"""Saved views and bulk actions: the views page (rename, delete), saving the queue's filter
as a view, the queue's bulk form and its per-row report, and their API
(``triage.desk.views`` and ``triage.desk.bulk`` do the work).

Two routers, included by ``triage.web.app``: ``router`` (the pages and forms) and ``api``
(under /api/v1); the caller comes from ``triage.web.auth`` like every other staff route, and
the navigation's counts from ``triage.web.deps.Renderer``. A bulk action answers its POST
with the report itself (which row was done, which refused and why): sent again, every row it
changed is refused by the collision guard, as the report's rows now carry newer versions than
the form did.
"""

import re
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from triage.desk.actions import NotFound
from triage.desk.bulk import (
    ACTIONS,
    MAX_ROWS,
    BulkAction,
    BulkError,
    BulkResult,
    Target,
    parse_target,
    run_bulk,
)
from triage.desk.views import (
    ARG_LIMITS,
    View,
    ViewError,
    ViewNameTaken,
    change_view,
    counted,
    delete_view,
    save_view,
    user_views,
    view_json,
)
from triage.web.auth import ApiWho, Principal, Who, check_csrf
from triage.web.deps import Csrf, Deps, Render, Renderer, RowId, Short, WebDeps, nav_views

FilterArg = Annotated[str, Form(max_length=200)]
# What the views page may say after a redirect (fixed keys, as triage.web.alerts.DONE).
DONE = frozenset({"view saved", "view renamed", "view deleted"})
# Where a bulk report links back to: the queue, with its own query string.
_QUEUE_LINK = re.compile(r"^/queue(\?[\w%&=+.~-]{0,1500})?$")
# Bound on the rows a bulk form or call may name before the action refuses more than MAX_ROWS
# by name (Starlette's form parser stops at 1,000 fields anyway).
MAX_LISTED = 1000


class ViewBody(BaseModel):
    name: str = Field(max_length=200, description="unique per user, at most 64 characters")
    filters: dict[str, str] = Field(
        default_factory=dict, max_length=len(ARG_LIMITS),
        description="the queue's query arguments: type, priority, status, assignee, review, "
                    "sla, q (as GET /api/v1/work-orders takes them)")


class ViewChange(BaseModel):
    name: str | None = Field(default=None, max_length=200)
    filters: dict[str, str] | None = Field(default=None, max_length=len(ARG_LIMITS))


class BulkItem(BaseModel):
    number: str = Field(max_length=20, description="e.g. ITX-000123")
    version: int | None = Field(
        default=None, ge=1, le=2**31 - 1,
        description="the version the caller last saw (the collision guard); null: none")


class BulkBody(BaseModel):
    action: str = Field(max_length=32, description=" | ".join(ACTIONS))
    work_orders: list[BulkItem] = Field(max_length=MAX_LISTED,
                                        description=f"at most {MAX_ROWS}")
    assignee: str | None = Field(default=None, max_length=64,
                                 description="assign: a staff user name; null unassigns")
    request_type: str | None = Field(default=None, max_length=64,
                                     description="reclassify: null keeps each row's type")
    priority: str | None = Field(default=None, max_length=64,
                                 description="reclassify: null keeps each row's priority")
    status: str | None = Field(default=None, max_length=32,
                               description="status: new | open | waiting_client | resolved")


def bulk_json(result: BulkResult) -> dict[str, Any]:
    return {"action": result.action, "done": result.done, "failed": result.failed,
            "results": [{"number": r.number, "outcome": r.outcome, "message": r.message or None,
                         "version": r.version} for r in result.rows]}


router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1")


# ---- pages ------------------------------------------------------------------------------------
def views_page(deps: WebDeps, render: Renderer, who: Principal, *, done: str = "",
               error: str = "", status: int = 200) -> Response:
    with deps.reads() as s:
        views = counted(s, user_views(s, who.user_id, who.name), deps.policy, deps.clock())
        return render("views", status, session=s, who=who, views=views, done=done,
                      error=error[:300])


@router.get("/views")
def views(deps: Deps, render: Render, who: Who,
          done: Annotated[str, Query(max_length=100)] = "") -> Response:
    return views_page(deps, render, who, done=done if done in DONE else "")


def change(deps: WebDeps, render: Renderer, who: Principal, csrf: str, done: str,
           fn: Callable[[Session], object]) -> Response:
    """Run a change to the caller's views; back to the views page, saying what was done."""
    check_csrf(who, csrf)
    try:
        with deps.sessions.begin() as s:
            fn(s)
    except NotFound:
        raise HTTPException(404, "no such view") from None
    except ViewError as e:
        return views_page(deps, render, who, error=str(e),
                          status=409 if isinstance(e, ViewNameTaken) else 422)
    return RedirectResponse("/views?" + urlencode({"done": done}), status_code=303)


@router.post("/views")
def f_save(deps: Deps, render: Render, who: Who, csrf_token: Csrf,
           name: Annotated[str, Form(max_length=200)],
           type: FilterArg = "", priority: FilterArg = "", status: FilterArg = "",
           assignee: FilterArg = "", review: FilterArg = "", sla: FilterArg = "",
           q: FilterArg = "") -> Response:
    given = {"type": type, "priority": priority, "status": status,
             "assignee": assignee, "review": review, "sla": sla, "q": q}
    args = {k: v for k, v in given.items() if v}
    return change(deps, render, who, csrf_token, "view saved",
                  lambda s: save_view(s, who.user_id, name, args, deps.policy))


@router.post("/views/{view_id}/rename")
def f_rename(deps: Deps, render: Render, who: Who, view_id: RowId, csrf_token: Csrf,
             name: Annotated[str, Form(max_length=200)]) -> Response:
    return change(deps, render, who, csrf_token, "view renamed",
                  lambda s: change_view(s, who.user_id, view_id, deps.policy, name=name))


@router.post("/views/{view_id}/delete")
def f_delete(deps: Deps, render: Render, who: Who, view_id: RowId,
             csrf_token: Csrf) -> Response:
    return change(deps, render, who, csrf_token, "view deleted",
                  lambda s: delete_view(s, who.user_id, view_id))


@router.post("/queue/bulk")
def f_bulk(deps: Deps, render: Render, who: Who, csrf_token: Csrf, action: Short,
           wo: Annotated[list[str], Form(max_length=MAX_LISTED)] = [],  # noqa: B006
           assignee: Short = "", request_type: Short = "", priority: Short = "",
           status: Short = "",
           back: Annotated[str, Form(max_length=2000)] = "/queue") -> Response:
    check_csrf(who, csrf_token)
    back = back if _QUEUE_LINK.match(back) else "/queue"
    shown = action if action in ACTIONS else "action"  # the page's title
    try:
        if action == "assign" and not assignee:  # "nobody" is a choice of its own
            raise BulkError("choose whom to assign to (or nobody)")
        targets = [parse_target(v) for v in wo]
        result = run_bulk(deps.desk, deps.sessions, deps.policy, who.name, BulkAction(
            action, assignee=None if assignee == "none" else assignee,
            request_type=request_type or None,
            priority=priority or None, status=status or None), targets)
    except BulkError as e:
        return render("bulk", 422, who=who, result=None, error=str(e)[:300], back=back,
                      action=shown)
    return render("bulk", 200, who=who, result=result, error="", back=back, action=shown)


# ---- API --------------------------------------------------------------------------------------
def api_change(deps: WebDeps, fn: Callable[[Session], Any]) -> dict[str, Any]:
    try:
        with deps.sessions.begin() as s:
            saved = fn(s)
            view = View(saved.id, saved.name, dict(saved.filters or {}))
    except NotFound:
        raise HTTPException(404, "no such view") from None
    except ViewNameTaken as e:
        raise HTTPException(409, str(e)) from None
    except ViewError as e:
        raise HTTPException(422, str(e)) from None
    with deps.reads() as s:
        return view_json(counted(s, [view], deps.policy, deps.clock())[0])


@api.get("/views", summary="The caller's views (the defaults first), with counts",
         tags=["views"])
def api_views(deps: Deps, who: ApiWho) -> dict[str, Any]:
    with deps.reads() as s:
        return {"views": [view_json(v) for v in nav_views(s, who, deps)]}


@api.post("/views", status_code=201, summary="Save a queue filter as a view", tags=["views"])
def api_save(deps: Deps, who: ApiWho, body: ViewBody) -> dict[str, Any]:
    return api_change(deps, lambda s: save_view(s, who.user_id, body.name, body.filters,
                                                deps.policy))


@api.patch("/views/{view_id}", summary="Rename a view or change its filter", tags=["views"])
def api_change_view(deps: Deps, who: ApiWho, view_id: RowId,
                    body: ViewChange) -> dict[str, Any]:
    return api_change(deps, lambda s: change_view(s, who.user_id, view_id, deps.policy,
                                                  name=body.name, args=body.filters))


@api.delete("/views/{view_id}", status_code=204, summary="Delete a view", tags=["views"])
def api_delete(deps: Deps, who: ApiWho, view_id: RowId) -> Response:
    try:
        with deps.sessions.begin() as s:
            delete_view(s, who.user_id, view_id)
    except NotFound:
        raise HTTPException(404, "no such view") from None
    return Response(status_code=204)


@api.post("/work-orders/bulk", summary="Assign, reclassify, change status or resolve "
          f"up to {MAX_ROWS} work orders: each row its own audited action, with the "
          "collision guard per row when a version is given; a result per row",
          tags=["work orders"])
def api_bulk(deps: Deps, who: ApiWho, body: BulkBody) -> dict[str, Any]:
    try:
        targets = [Target(parse_target(i.number).number, i.version) for i in body.work_orders]
        result = run_bulk(deps.desk, deps.sessions, deps.policy, who.name, BulkAction(
            body.action, assignee=body.assignee, request_type=body.request_type,
            priority=body.priority, status=body.status), targets)
    except BulkError as e:
        raise HTTPException(422, str(e)) from None
    return bulk_json(result)


__all__ = ["DONE", "BulkBody", "ViewBody", "ViewChange", "api", "bulk_json", "router"]
