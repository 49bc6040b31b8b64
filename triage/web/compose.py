"""Composing a reply: the reply form (text, files, and the status to set with it), canned
replies inserted into it, and the pages and API that manage canned replies
(``triage.desk.canned``, ``triage.desk.uploads`` and ``Desk.reply`` do the work).

Without script, "Insert" posts the reply form to ``/reply/canned``, which answers the
work-order page with the canned text added to what was typed (files chosen are not kept:
a browser cannot refill a file input). ``/static/js/compose.js`` makes it instant by
fetching the rendered text from the API.

An upload over the limits is refused with 413 before the body is read when its
``Content-Length`` already says so (``UploadGate``), else after parsing (Starlette spools
file parts to disk, so a large body costs disk, not memory, until refused).

Added to the app by ``create_web_app`` with its own login and CSRF checks, like the other
staff routes.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Path, Query, UploadFile
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
from triage.desk.uploads import Upload, UploadLimits, UploadRefused, store
from triage.storage.models import WorkOrder
from triage.web.alerts import done_text

ID_MAX = 2**31 - 1  # 32-bit ids on PostgreSQL
NUMBER_PATTERN = r"^ITX-\d{6,12}$"
CannedId = Annotated[int, Path(ge=1, le=ID_MAX)]
Number = Annotated[str, Path(pattern=NUMBER_PATTERN, description="e.g. ITX-000123")]
Csrf = Annotated[str, Form(max_length=200)]
Version = Annotated[int | None, Form(ge=1, le=ID_MAX)]
MAX_TYPES = 64  # request types a template may be tagged with (the policy has far fewer)
# Multipart framing around the files: headers per part and the text fields (a reply is at
# most 50,000 characters, four bytes each in UTF-8).
FORM_OVERHEAD = 256 * 1024


class UploadGate:
    """Refuses a reply whose declared size is already over the limits, before reading it."""

    def __init__(self, app: ASGIApp, limit: int, message: str,
                 headers: dict[str, str]) -> None:
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


def read_uploads(files: list[UploadFile], limits: UploadLimits) -> list[Upload]:
    """The chosen files (an empty file input sends one nameless empty part: skipped), read no
    further than the per-file limit allows."""
    chosen = [f for f in files if f.filename or (f.size or 0) > 0]
    if len(chosen) > limits.max_files:
        raise UploadRefused(f"{len(chosen)} files: a reply takes {limits.describe()}", 422)
    out, total = [], 0
    for f in chosen:
        data = f.file.read(limits.max_file_bytes + 1)
        total += len(data)
        out.append(Upload(f.filename or "", f.content_type or "", data))
        if len(data) > limits.max_file_bytes or total > limits.max_total_bytes:
            break  # ``store`` names the limit
    return out


@dataclass
class ComposeRoutes:
    """What the routes need from ``create_web_app``: its dependencies and helpers."""

    deps: Any  # triage.web.app.WebDeps (not imported: that module imports this one)
    render: Callable[..., Response]
    principal: Callable[..., Any]  # the signed-in caller (triage.web.app.Principal)
    api_principal: Callable[..., Any]  # the same, with the API's CSRF header check
    check_csrf: Callable[[Any, str | None], None]
    act: Callable[..., Response]  # run a work-order action, answer as the forms do
    work_order_view: Callable[..., Response]  # the work-order page (drafts, error, status)
    limits: UploadLimits
    security_headers: dict[str, str]

    def add(self, app: FastAPI, api: APIRouter) -> None:
        deps, render, check_csrf = self.deps, self.render, self.check_csrf
        policy, limits = deps.policy, self.limits
        canned = CannedReplies(deps.sessions, policy, deps.clock)
        Who = Annotated[Any, Depends(self.principal)]
        ApiWho = Annotated[Any, Depends(self.api_principal)]
        app.add_middleware(UploadGate, limit=limits.max_total_bytes + FORM_OVERHEAD,
                           message=f"Too large: a reply takes {limits.describe()}.\n",
                           headers=self.security_headers)

        # ---- the reply form -----------------------------------------------------------------
        @app.post("/work-orders/{number}/reply", include_in_schema=False)
        def f_reply(who: Who, number: Number, csrf_token: Csrf,
                    body: Annotated[str, Form(max_length=50_000)],
                    then: Annotated[str, Form(max_length=32)] = "",
                    wait: Annotated[str, Form(max_length=8)] = "",
                    files: Annotated[list[UploadFile], File()] = [],  # noqa: B006 (FastAPI)
                    version: Version = None) -> Response:
            check_csrf(who, csrf_token)
            then = then or ("waiting_client" if wait else "")
            try:
                stored = store(read_uploads(files, limits), deps.attachments_dir, limits)
            except UploadRefused as e:
                return self.work_order_view(who, number, error=str(e), status=e.status,
                                            drafts={"reply": body})
            label = {"waiting_client": "reply queued, waiting on client",
                     "resolved": "reply queued and resolved"}.get(then, "reply queued")
            # A refused reply shows the page again: a browser cannot refill a file input,
            # so the page names the files to choose again.
            drafts = {"reply": body, "files": ", ".join(f.filename for f in stored)}
            return self.act(who, number, csrf_token, label,
                            lambda: deps.desk.reply(
                                number, who.name, body, then=then or None, files=stored,
                                agent_name=who.display_name, version=version),
                            drafts=drafts)

        @app.post("/work-orders/{number}/reply/canned", include_in_schema=False)
        def f_insert(who: Who, number: Number, csrf_token: Csrf,
                     canned_id: Annotated[int, Form(alias="canned", ge=1, le=ID_MAX)],
                     body: Annotated[str, Form(max_length=50_000)] = "") -> Response:
            """Without script: the page again, the canned text added to what was typed."""
            check_csrf(who, csrf_token)
            try:
                with deps.reads() as s:
                    text = canned.render(s, canned_id, number,
                                         who.display_name or agent_name(s, who.name))
            except NotFound as e:
                return self.work_order_view(who, number, error=f"no {e.args[0]}", status=404,
                                            drafts={"reply": body})
            except CannedError as e:
                return self.work_order_view(who, number, error=str(e), status=422,
                                            drafts={"reply": body})
            joined = f"{body.rstrip()}\n\n{text}" if body.strip() else text
            return self.work_order_view(who, number, drafts={"reply": joined})

        # ---- canned reply pages -------------------------------------------------------------
        def canned_page(who: Any, *, editing: Canned | None = None, done: str = "",
                        error: str = "", status: int = 200,
                        form: dict[str, Any] | None = None) -> Response:
            with deps.reads() as s:
                items = canned.listing(s)
                return render("canned", status, session=s, who=who, items=items,
                              editing=editing, done=done, error=error[:500],
                              form=form or _form_of(editing), types=policy.types,
                              variables=VARIABLES, filters=sorted(FILTERS),
                              tests=sorted(TESTS), max_body=MAX_BODY)

        @app.get("/canned", include_in_schema=False)
        def canned_list(who: Who,
                        done: Annotated[str, Query(max_length=100)] = "") -> Response:
            return canned_page(who, done=done_text(done))

        @app.get("/canned/{canned_id}", include_in_schema=False)
        def canned_edit(who: Who, canned_id: CannedId,
                        done: Annotated[str, Query(max_length=100)] = "") -> Response:
            try:
                with deps.reads() as s:
                    item = canned.get(s, canned_id)
            except NotFound:
                return render("error", 404, who=who, title="Not found",
                              message=f"No canned reply {canned_id}.")
            return canned_page(who, editing=item, done=done_text(done))

        Name = Annotated[str, Form(max_length=200)]
        Body = Annotated[str, Form(max_length=MAX_BODY)]
        Types = Annotated[list[str], Form()]

        def save(who: Any, canned_id: int | None, name: str, body: str,
                 request_types: list[str]) -> Response:
            form = {"name": name, "body": body, "request_types": request_types}
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
                return render("error", 404, who=who, title="Not found",
                              message=f"No canned reply {canned_id}.")
            except CannedError as e:
                return canned_page(who, editing=editing, error=str(e), status=422, form=form)
            return RedirectResponse(f"/canned/{item.id}?{urlencode({'done': 'canned saved'})}",
                                    status_code=303)

        @app.post("/canned", include_in_schema=False)
        def canned_create(who: Who, csrf_token: Csrf, name: Name, body: Body,
                          request_types: Types = []) -> Response:  # noqa: B006 (FastAPI)
            check_csrf(who, csrf_token)
            return save(who, None, name, body, request_types)

        @app.post("/canned/{canned_id}", include_in_schema=False)
        def canned_update(who: Who, canned_id: CannedId, csrf_token: Csrf, name: Name,
                          body: Body, request_types: Types = []  # noqa: B006 (FastAPI)
                          ) -> Response:
            check_csrf(who, csrf_token)
            return save(who, canned_id, name, body, request_types)

        @app.post("/canned/{canned_id}/delete", include_in_schema=False)
        def canned_delete(who: Who, canned_id: CannedId, csrf_token: Csrf) -> Response:
            check_csrf(who, csrf_token)
            try:
                canned.delete(canned_id, who.name)
            except NotFound:
                return render("error", 404, who=who, title="Not found",
                              message=f"No canned reply {canned_id}.")
            return RedirectResponse(f"/canned?{urlencode({'done': 'canned deleted'})}",
                                    status_code=303)

        # ---- API ----------------------------------------------------------------------------
        @api.get("/canned-replies", summary="Canned replies; with work_order, those tagged "
                 "with its request type first (suggested)", tags=["canned replies"])
        def api_canned(who: ApiWho, work_order: Annotated[
                str | None, Query(pattern=NUMBER_PATTERN)] = None) -> dict[str, Any]:
            with deps.reads() as s:
                request_type = None
                if work_order is not None:
                    request_type = _request_type(s, work_order)
                    if request_type is None:
                        raise HTTPException(404, f"no work order {work_order}")
                return {"canned_replies": [_canned_json(c)
                                           for c in canned.listing(s, request_type)]}

        @api.get("/work-orders/{number}/canned-replies/{canned_id}",
                 summary="A canned reply rendered for this work order and the caller",
                 tags=["canned replies"])
        def api_render(who: ApiWho, number: Number, canned_id: CannedId) -> dict[str, Any]:
            try:
                with deps.reads() as s:
                    text = canned.render(s, canned_id, number,
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


__all__ = ["ComposeRoutes", "UploadGate", "read_uploads"]
