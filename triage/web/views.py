"""Saved views and bulk actions: the views page (rename, delete), saving the queue's filter
as a view, the queue's bulk form and its per-row report, and their API
(``triage.desk.views`` and ``triage.desk.bulk`` do the work).

Added to the app by ``create_web_app`` with its own login and CSRF checks, as
``triage.web.screened`` is. A bulk action answers its POST with the report itself (which
row was done, which refused and why): sent again, every row it changed is refused by the
collision guard, as the report's rows now carry newer versions than the form did.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Path, Query
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
    navigation,
    save_view,
    user_views,
    view_json,
)

ViewId = Annotated[int, Path(ge=1, le=2**31 - 1)]  # 32-bit ids on PostgreSQL
Csrf = Annotated[str, Form(max_length=200)]
Short = Annotated[str, Form(max_length=64)]
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


def nav_views(s: Session, who: Any, deps: Any) -> list[Any]:
    """The signed-in user's views, counted, for the navigation of every page."""
    return navigation(s, who.user_id, who.name, deps.policy, deps.clock())


@dataclass
class ViewRoutes:
    """What the routes need from ``create_web_app``: its dependencies and helpers."""

    deps: Any  # triage.web.app.WebDeps (not imported: that module imports this one)
    render: Callable[..., Response]
    principal: Callable[..., Any]  # the signed-in caller (triage.web.app.Principal)
    api_principal: Callable[..., Any]  # the same, with the API's CSRF header check
    check_csrf: Callable[[Any, str | None], None]

    def add(self, app: FastAPI, api: APIRouter) -> None:
        deps, render, check_csrf = self.deps, self.render, self.check_csrf
        policy = deps.policy
        Who = Annotated[Any, Depends(self.principal)]
        ApiWho = Annotated[Any, Depends(self.api_principal)]

        # ---- pages ----------------------------------------------------------------------------
        def views_page(who: Any, *, done: str = "", error: str = "",
                       status: int = 200) -> Response:
            with deps.reads() as s:
                views = counted(s, user_views(s, who.user_id, who.name), policy, deps.clock())
                return render("views", status, session=s, who=who, views=views, done=done,
                              error=error[:300])

        @app.get("/views", include_in_schema=False)
        def views(who: Who, done: Annotated[str, Query(max_length=100)] = "") -> Response:
            return views_page(who, done=done if done in DONE else "")

        def change(who: Any, csrf: str, done: str, fn: Callable[[Session], object]) -> Response:
            check_csrf(who, csrf)
            try:
                with deps.sessions.begin() as s:
                    fn(s)
            except NotFound:
                raise HTTPException(404, "no such view") from None
            except ViewError as e:
                return views_page(who, error=str(e),
                                  status=409 if isinstance(e, ViewNameTaken) else 422)
            return RedirectResponse("/views?" + urlencode({"done": done}), status_code=303)

        @app.post("/views", include_in_schema=False)
        def f_save(who: Who, csrf_token: Csrf, name: Annotated[str, Form(max_length=200)],
                   type: FilterArg = "", priority: FilterArg = "", status: FilterArg = "",
                   assignee: FilterArg = "", review: FilterArg = "", sla: FilterArg = "",
                   q: FilterArg = "") -> Response:
            given = {"type": type, "priority": priority, "status": status,
                     "assignee": assignee, "review": review, "sla": sla, "q": q}
            args = {k: v for k, v in given.items() if v}
            return change(who, csrf_token, "view saved",
                          lambda s: save_view(s, who.user_id, name, args, policy))

        @app.post("/views/{view_id}/rename", include_in_schema=False)
        def f_rename(who: Who, view_id: ViewId, csrf_token: Csrf,
                     name: Annotated[str, Form(max_length=200)]) -> Response:
            return change(who, csrf_token, "view renamed",
                          lambda s: change_view(s, who.user_id, view_id, policy, name=name))

        @app.post("/views/{view_id}/delete", include_in_schema=False)
        def f_delete(who: Who, view_id: ViewId, csrf_token: Csrf) -> Response:
            return change(who, csrf_token, "view deleted",
                          lambda s: delete_view(s, who.user_id, view_id))

        @app.post("/queue/bulk", include_in_schema=False)
        def f_bulk(who: Who, csrf_token: Csrf, action: Short,
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
                result = run_bulk(deps.desk, deps.sessions, policy, who.name, BulkAction(
                    action, assignee=None if assignee == "none" else assignee,
                    request_type=request_type or None,
                    priority=priority or None, status=status or None), targets)
            except BulkError as e:
                return render("bulk", 422, who=who, result=None, error=str(e)[:300],
                              back=back, action=shown)
            return render("bulk", 200, who=who, result=result, error="", back=back,
                          action=shown)

        # ---- API --------------------------------------------------------------------------------
        def api_change(who: Any, fn: Callable[[Session], Any]) -> dict[str, Any]:
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
                return view_json(counted(s, [view], policy, deps.clock())[0])

        @api.get("/views", summary="The caller's views (the defaults first), with counts",
                 tags=["views"])
        def api_views(who: ApiWho) -> dict[str, Any]:
            with deps.reads() as s:
                return {"views": [view_json(v) for v in nav_views(s, who, deps)]}

        @api.post("/views", status_code=201, summary="Save a queue filter as a view",
                  tags=["views"])
        def api_save(who: ApiWho, body: ViewBody) -> dict[str, Any]:
            return api_change(who, lambda s: save_view(s, who.user_id, body.name, body.filters,
                                                       policy))

        @api.patch("/views/{view_id}", summary="Rename a view or change its filter",
                   tags=["views"])
        def api_change_view(who: ApiWho, view_id: ViewId, body: ViewChange) -> dict[str, Any]:
            return api_change(who, lambda s: change_view(s, who.user_id, view_id, policy,
                                                         name=body.name, args=body.filters))

        @api.delete("/views/{view_id}", status_code=204, summary="Delete a view",
                    tags=["views"])
        def api_delete(who: ApiWho, view_id: ViewId) -> Response:
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
        def api_bulk(who: ApiWho, body: BulkBody) -> dict[str, Any]:
            try:
                targets = [Target(parse_target(i.number).number, i.version)
                           for i in body.work_orders]
                result = run_bulk(deps.desk, deps.sessions, policy, who.name, BulkAction(
                    body.action, assignee=body.assignee, request_type=body.request_type,
                    priority=body.priority, status=body.status), targets)
            except BulkError as e:
                raise HTTPException(422, str(e)) from None
            return bulk_json(result)


__all__ = ["DONE", "BulkBody", "ViewBody", "ViewChange", "ViewRoutes", "bulk_json",
           "nav_views"]
