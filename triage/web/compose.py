"""Composing a reply: canned replies inserted into the reply form, the pages and API that
manage canned replies, and the gate on a reply's upload size (``triage.desk.canned``,
``triage.desk.uploads`` and ``Desk.reply`` do the work). The reply itself (text, files, the
status to set with it) is the ``reply`` row of ``triage.web.actions.ACTIONS``.

Without script, "Insert" posts the reply form to ``/reply/canned``, which answers the
work-order page with the canned text added to what was typed (files chosen are not kept:
a browser cannot refill a file input). ``/static/js/compose.js`` makes it instant by
fetching the rendered text from the API.

An upload over the limits is refused with 413 before the body is read when its
``Content-Length`` already says so (``UploadGate``, added by ``gate_uploads``), else after
parsing (Starlette spools file parts to disk, so a large body costs disk, not memory, until
refused).

Two routers, included by ``triage.web.app``: ``router`` (the pages) and ``api`` (under
/api/v1).
"""

from collections.abc import Mapping
from datetime import UTC
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, FastAPI, Form, HTTPException, Path, Query
from fastapi.responses import RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Receive, Scope, Send

from triage.desk.actions import ActionError, NotFound
from triage.desk.canned import (
    FILTERS,
    MAX_BODY,
    TESTS,
    VARIABLES,
    Canned,
    CannedError,
    CannedReplies,
    agent_name,
)
from triage.storage.models import WorkOrder
from triage.web.alerts import done_text
from triage.web.auth import ApiWho, Principal, Who, check_csrf
from triage.web.deps import ID_MAX, NUMBER_PATTERN, Csrf, Deps, Number, Render, Renderer, WebDeps
from triage.web.pages import work_order_view

CannedId = Annotated[int, Path(ge=1, le=ID_MAX)]
MAX_TYPES = 64  # request types a template may be tagged with (the policy has far fewer)
# Multipart framing around the files: headers per part and the text fields (a reply is at
# most 50,000 characters, four bytes each in UTF-8).
FORM_OVERHEAD = 256 * 1024

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["canned replies"])


class UploadGate:
    """Refuses a reply whose declared size is already over the limits, before reading it."""

    def __init__(self, app: ASGIApp, limit: int, message: str,
                 headers: Mapping[str, str]) -> None:
        self.app, self.limit, self.message = app, limit, message.encode()
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] == "http" and scope["method"] == "POST"
                and scope["path"].startswith("/work-orders/")
                and scope["path"].endswith("/reply")):
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > self.limit:
                await send({"type": "http.response.start", "status": 413, "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"connection", b"close"), *self.headers]})
                await send({"type": "http.response.body", "body": self.message})
                return
        await self.app(scope, receive, send)


def gate_uploads(app: FastAPI, deps: WebDeps, *, headers: Mapping[str, str]) -> None:
    """Adds the ``UploadGate`` for ``deps.upload_limits``."""
    limits = deps.upload_limits
    app.add_middleware(UploadGate, limit=limits.max_total_bytes + FORM_OVERHEAD,
                       message=f"Too large: a reply takes {limits.describe()}.\n",
                       headers=headers)


def canned_of(deps: WebDeps) -> CannedReplies:
    return CannedReplies(deps.sessions, deps.policy, deps.clock)


# ---- inserting into the reply form ------------------------------------------------------------
@router.post("/work-orders/{number}/reply/canned")
def insert(deps: Deps, render: Render, who: Who, number: Number, csrf_token: Csrf,
           canned_id: Annotated[int, Form(alias="canned", ge=1, le=ID_MAX)],
           body: Annotated[str, Form(max_length=50_000)] = "") -> Response:
    """Without script: the page again, the canned text added to what was typed."""
    check_csrf(who, csrf_token)
    try:
        with deps.reads() as s:
            text = canned_of(deps).render(s, canned_id, number,
                                          who.display_name or agent_name(s, who.name))
    except NotFound as e:
        return work_order_view(deps, render, who, number, error=f"no {e.args[0]}",
                               status=404, drafts={"reply": body})
    except CannedError as e:
        return work_order_view(deps, render, who, number, error=str(e), status=422,
                               drafts={"reply": body})
    joined = f"{body.rstrip()}\n\n{text}" if body.strip() else text
    return work_order_view(deps, render, who, number, drafts={"reply": joined})


# ---- canned reply pages -----------------------------------------------------------------------
def canned_page(deps: WebDeps, render: Renderer, who: Principal, *,
                editing: Canned | None = None, done: str = "", error: str = "",
                status: int = 200, form: dict[str, Any] | None = None) -> Response:
    with deps.reads() as s:
        items = canned_of(deps).listing(s)
        return render("canned", status, session=s, who=who, items=items, editing=editing,
                      done=done, error=error[:500], form=form or _form_of(editing),
                      types=deps.policy.types, variables=VARIABLES, filters=sorted(FILTERS),
                      tests=sorted(TESTS), max_body=MAX_BODY)


def _not_found(render: Renderer, who: Principal, canned_id: int | None) -> Response:
    return render("error", 404, who=who, title="Not found",
                  message=f"No canned reply {canned_id}.")


@router.get("/canned")
def canned_list(deps: Deps, render: Render, who: Who,
                done: Annotated[str, Query(max_length=100)] = "") -> Response:
    return canned_page(deps, render, who, done=done_text(done))


@router.get("/canned/{canned_id}")
def canned_edit(deps: Deps, render: Render, who: Who, canned_id: CannedId,
                done: Annotated[str, Query(max_length=100)] = "") -> Response:
    try:
        with deps.reads() as s:
            item = canned_of(deps).get(s, canned_id)
    except NotFound:
        return _not_found(render, who, canned_id)
    return canned_page(deps, render, who, editing=item, done=done_text(done))


Name = Annotated[str, Form(max_length=200)]
Body = Annotated[str, Form(max_length=MAX_BODY)]
Types = Annotated[list[str], Form()]


def save(deps: WebDeps, render: Renderer, who: Principal, canned_id: int | None, name: str,
         body: str, request_types: list[str]) -> Response:
    form = {"name": name, "body": body, "request_types": request_types}
    canned = canned_of(deps)
    editing = None
    try:
        if len(request_types) > MAX_TYPES:
            raise CannedError(f"at most {MAX_TYPES} request types")
        if canned_id is None:
            item = canned.create(who.name, name, body, request_types)
        else:
            with deps.reads() as s:
                editing = canned.get(s, canned_id)
            item = canned.update(canned_id, who.name, name, body, request_types)
    except NotFound:
        return _not_found(render, who, canned_id)
    except CannedError as e:
        return canned_page(deps, render, who, editing=editing, error=str(e), status=422,
                           form=form)
    return RedirectResponse(f"/canned/{item.id}?{urlencode({'done': 'canned saved'})}",
                            status_code=303)


@router.post("/canned")
def canned_create(deps: Deps, render: Render, who: Who, csrf_token: Csrf, name: Name,
                  body: Body, request_types: Types = []) -> Response:  # noqa: B006 (FastAPI)
    check_csrf(who, csrf_token)
    return save(deps, render, who, None, name, body, request_types)


@router.post("/canned/{canned_id}")
def canned_update(deps: Deps, render: Render, who: Who, canned_id: CannedId, csrf_token: Csrf,
                  name: Name, body: Body,
                  request_types: Types = []) -> Response:  # noqa: B006 (FastAPI)
    check_csrf(who, csrf_token)
    return save(deps, render, who, canned_id, name, body, request_types)


@router.post("/canned/{canned_id}/delete")
def canned_delete(deps: Deps, render: Render, who: Who, canned_id: CannedId,
                  csrf_token: Csrf) -> Response:
    check_csrf(who, csrf_token)
    try:
        canned_of(deps).delete(canned_id, who.name)
    except NotFound:
        return _not_found(render, who, canned_id)
    return RedirectResponse(f"/canned?{urlencode({'done': 'canned deleted'})}",
                            status_code=303)


# ---- API --------------------------------------------------------------------------------------
@api.get("/canned-replies", summary="Canned replies; with work_order, those tagged with its "
         "request type first (suggested)")
def api_canned(deps: Deps, who: ApiWho, work_order: Annotated[
        str | None, Query(pattern=NUMBER_PATTERN)] = None) -> dict[str, Any]:
    with deps.reads() as s:
        request_type = None
        if work_order is not None:
            request_type = _request_type(s, work_order)
            if request_type is None:
                raise HTTPException(404, f"no work order {work_order}")
        return {"canned_replies": [_canned_json(c)
                                   for c in canned_of(deps).listing(s, request_type)]}


@api.get("/work-orders/{number}/canned-replies/{canned_id}",
         summary="A canned reply rendered for this work order and the caller")
def api_render(deps: Deps, who: ApiWho, number: Number, canned_id: CannedId) -> dict[str, Any]:
    try:
        with deps.reads() as s:
            text = canned_of(deps).render(s, canned_id, number,
                                          who.display_name or agent_name(s, who.name))
    except NotFound as e:
        raise HTTPException(404, f"no {e.args[0]}") from None
    except ActionError as e:
        raise HTTPException(422, str(e)) from None
    return {"id": canned_id, "work_order": number, "text": text}


def _request_type(s: Session, number: str) -> str | None:
    found: str | None = s.scalar(select(WorkOrder.request_type)
                                 .where(WorkOrder.number == number))
    return found


def _form_of(item: Canned | None) -> dict[str, Any]:
    if item is None:
        return {"name": "", "body": "", "request_types": []}
    return {"name": item.name, "body": item.body, "request_types": list(item.request_types)}


def _canned_json(c: Canned) -> dict[str, Any]:
    return {"id": c.id, "name": c.name, "body": c.body, "request_types": list(c.request_types),
            "suggested": c.suggested, "updated_by": c.updated_by,
            "updated_at": c.updated_at.astimezone(UTC).isoformat()}


__all__ = ["UploadGate", "api", "gate_uploads", "router"]
