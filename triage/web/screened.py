"""The Screened pages and their API: every non-request and quarantined message, one of them
in detail, and the actions "open as work order" and "reprocess" (``triage.desk.screened``
does the work; a form route and an API route call the same method).

Two routers, included by ``triage.web.app``: ``router`` (the pages) and ``api`` (under
/api/v1). They take the caller from ``triage.web.auth`` like every other staff route.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import RedirectResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from triage.desk.actions import ActionError, NotFound
from triage.desk.screened import (
    KIND_FILTERS,
    SCREENED_BY,
    ScreenedFilter,
    ScreenedPage,
    Screening,
    default_request_type,
    headers_of,
    kind_of,
    reason_text,
    screened_message,
    screened_page,
)
from triage.storage.models import Message, WorkOrder
from triage.web.alerts import done_text
from triage.web.auth import ApiWho, Principal, Who, check_csrf
from triage.web.deps import ID_MAX, Csrf, Deps, Render, Renderer, Short, WebDeps
from triage.web.pages import clean_html
from triage.web.params import known, list_links

RAW_SHOWN = 20_000  # characters of a quarantined message's raw bytes shown as text
MessageId = Annotated[int, Path(ge=1, le=ID_MAX)]

router = APIRouter(include_in_schema=False)
api = APIRouter(prefix="/api/v1", tags=["screened"])


class OpenScreened(BaseModel):
    request_type: str | None = Field(
        default=None, max_length=64,
        description="default: the text model's best request type, or other")
    priority: str | None = Field(default=None, max_length=64,
                                 description="default: the type's priority")


def screened_filter(
    kind: Annotated[str | None, Query(max_length=64)] = None,
    by: Annotated[str | None, Query(max_length=64)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ScreenedFilter:
    return ScreenedFilter(kind=known(kind, KIND_FILTERS), by=known(by, SCREENED_BY),
                          page=page, page_size=per_page)


Filter = Annotated[ScreenedFilter, Depends(screened_filter)]


def screening(deps: WebDeps) -> Screening:
    """The actions; 503 where the daemon runs without them."""
    if deps.screening is None:
        raise HTTPException(503, "screened-mail actions are not configured here")
    return deps.screening


# ---- pages ------------------------------------------------------------------------------------
@router.get("/screened")
def screened(deps: Deps, render: Render, who: Who, f: Filter) -> Response:
    with deps.reads() as s:
        page = screened_page(s, f, deps.clock())
    return render("screened", who=who, f=f, page=page, kinds=KIND_FILTERS, bys=SCREENED_BY,
                  **list_links("/screened", f))


@router.get("/screened/{message_id}")
def screened_detail(deps: Deps, render: Render, who: Who, message_id: MessageId,
                    done: Annotated[str, Query(max_length=100)] = "") -> Response:
    return detail_view(deps, render, who, message_id, done=done_text(done))


def detail_view(deps: WebDeps, render: Renderer, who: Principal, message_id: int, *,
                done: str = "", error: str = "", status: int = 200) -> Response:
    """The message page; ``error`` is the server's text for the action just posted."""
    policy = deps.policy
    with deps.reads() as s:
        m = screened_message(s, message_id)
        if m is None:
            return render("error", 404, session=s, who=who, title="Not found",
                          message=f"No message {message_id}.")
        number = _number_of(s, m)
        html = clean_html(m.body_html) if m.body_html else None
        raw = None
        if m.disposition in ("quarantined", "reprocessed") and m.raw is not None:
            raw = m.raw.data[:RAW_SHOWN * 4].decode("utf-8", "replace")[:RAW_SHOWN]
        return render("screened_message", status, session=s, who=who, m=m, number=number,
                      html=html, raw=raw, headers=headers_of(m),
                      kind=kind_of(m.disposition, m.reason),
                      reason=reason_text(m.disposition, m.reason, m.screening),
                      screening=m.screening or {}, types=policy.types,
                      priorities=policy.priorities,
                      default_type=default_request_type(m, policy),
                      done=done, error=error[:300])


def act(deps: WebDeps, render: Renderer, who: Principal, message_id: int, csrf: str,
        fn: Callable[[], str]) -> Response:
    """Run an action; go where it says, or back to the message with the error."""
    check_csrf(who, csrf)
    try:
        target = fn()
    except NotFound:
        raise HTTPException(404, f"no message {message_id}") from None
    except ActionError as e:
        return detail_view(deps, render, who, message_id, error=str(e), status=422)
    return RedirectResponse(target, status_code=303)


@router.post("/screened/{message_id}/open")
def f_open(deps: Deps, render: Render, who: Who, message_id: MessageId, csrf_token: Csrf,
           request_type: Short = "", priority: Short = "") -> Response:
    def run() -> str:
        o = screening(deps).open_as_work_order(message_id, who.name, request_type or None,
                                               priority or None)
        done = "opened from Screened" if o.created else "already opened"
        return f"/work-orders/{o.number}?{urlencode({'done': done})}"
    return act(deps, render, who, message_id, csrf_token, run)


@router.post("/screened/{message_id}/reprocess")
def f_reprocess(deps: Deps, render: Render, who: Who, message_id: MessageId,
                csrf_token: Csrf) -> Response:
    def run() -> str:
        r = screening(deps).reprocess(message_id, who.name)
        done = f"reprocessed: {r.outcome.replace('_', ' ')}"
        if r.work_order:
            return f"/work-orders/{r.work_order}?{urlencode({'done': done})}"
        return f"/screened/{r.message_id or message_id}?{urlencode({'done': done})}"
    return act(deps, render, who, message_id, csrf_token, run)


# ---- API --------------------------------------------------------------------------------------
def api_call(message_id: int, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    try:
        return fn()
    except NotFound:
        raise HTTPException(404, f"no message {message_id}") from None
    except ActionError as e:
        raise HTTPException(422, str(e)) from None


@api.get("/screened", summary="Screened mail (non-requests and quarantined), newest first")
def api_screened(deps: Deps, who: ApiWho, f: Filter) -> dict[str, Any]:
    with deps.reads() as s:
        return _page_json(screened_page(s, f, deps.clock()))


@api.get("/screened/{message_id}", summary="One screened message: why, headers, text")
def api_screened_message(deps: Deps, who: ApiWho, message_id: MessageId) -> dict[str, Any]:
    with deps.reads() as s:
        m = screened_message(s, message_id)
        if m is None:
            raise HTTPException(404, f"no message {message_id}")
        return _message_json(m, _number_of(s, m), default_request_type(m, deps.policy))


@api.post("/screened/{message_id}/open", summary="Open as a work order (due dates from the "
          "original arrival; acknowledged; kept as training data); idempotent")
def api_open(deps: Deps, who: ApiWho, message_id: MessageId,
             body: OpenScreened) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        o = screening(deps).open_as_work_order(message_id, who.name, body.request_type,
                                               body.priority)
        return {"work_order": o.number, "created": o.created, "acked": o.acked}
    return api_call(message_id, run)


@api.post("/screened/{message_id}/reprocess", summary="Run a quarantined message through "
          "parse, classify and store again; idempotent")
def api_reprocess(deps: Deps, who: ApiWho, message_id: MessageId) -> dict[str, Any]:
    def run() -> dict[str, Any]:
        r = screening(deps).reprocess(message_id, who.name)
        return {"outcome": r.outcome, "message": r.message_id, "work_order": r.work_order,
                "repeated": r.repeated}
    return api_call(message_id, run)


def _number_of(s: Session, m: Message) -> str | None:
    if m.work_order_id is None:
        return None
    number: str | None = s.scalar(select(WorkOrder.number)
                                  .where(WorkOrder.id == m.work_order_id))
    return number


def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t else None


def _page_json(page: ScreenedPage) -> dict[str, Any]:
    return {
        "total": page.total, "page": page.page, "pages": page.pages, "counts": page.counts,
        "awaiting": page.awaiting,
        "messages": [{"id": r.id, "received_at": _iso(r.received_at), "from": r.from_addr,
                      "from_name": r.from_name, "subject": r.subject, "kind": r.kind,
                      "screened_by": r.by, "reason": r.reason} for r in page.rows],
    }


def _message_json(m: Message, number: str | None, default_type: str) -> dict[str, Any]:
    return {
        "id": m.id, "received_at": _iso(m.received_at), "from": m.from_addr,
        "from_name": m.from_name, "subject": m.subject, "disposition": m.disposition,
        "kind": kind_of(m.disposition, m.reason), "screened_by": m.screened_by,
        "reason": reason_text(m.disposition, m.reason, m.screening),
        "screening": m.screening, "work_order": number,
        "default_request_type": default_type,
        "headers": [[k, v] for k, v in headers_of(m)], "text": m.body_text,
        "attachments": [{"filename": a.filename, "content_type": a.content_type,
                         "size": a.size} for a in m.attachments],
    }


__all__ = ["OpenScreened", "api", "router"]
