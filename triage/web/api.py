"""The JSON API under /api/v1: the queue, one work order, and the work-order actions (one
route per row of ``triage.web.actions.ACTIONS``), for an API token
(``Authorization: Bearer itx_...``) or a signed-in session with ``X-CSRF-Token``.

Every action route takes the collision guard: the work order's version the caller last saw,
as ``version`` in the body or as ``If-Match`` (the ``ETag`` of ``GET`` on the work order);
when the work order has changed since, nothing is done and the answer is 409 with the
changes. Without either there is no check, so scripts written before the guard keep working.
"""

import contextlib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request, Response
from fastapi.responses import JSONResponse

from triage.desk.actions import ActionError, Conflict, NotFound
from triage.desk.queue import Detail, QueuePage, queue_page, work_order_detail
from triage.storage.models import WorkOrder
from triage.web.actions import ACTIONS, Action, Guarded
from triage.web.auth import ApiWho, Who
from triage.web.deps import ID_MAX, Deps, Number, WebDeps
from triage.web.pages import Filter

router = APIRouter(prefix="/api/v1", tags=["work orders"])
# The OpenAPI document, for a signed-in caller only (not part of the document itself).
docs = APIRouter(include_in_schema=False)


CONFLICT_DOC: dict[int | str, dict[str, Any]] = {409: {"description": (
    "The work order changed after the version given (``version`` or ``If-Match``); nothing "
    "was done. ``detail``: ``message``, ``number``, ``your_version``, ``current_version`` and "
    "``changes`` (the audit events since, oldest first: ``at``, ``actor``, ``action``, "
    "``detail``, ``version``). The ``ETag`` header holds the current version.")}}


def if_match(if_match: Annotated[str | None, Header(
        max_length=64, description="the version as an entity tag (``\"7\"``; ``*`` or "
        "absent: no check); the same as ``version`` in the body")] = None) -> int | None:
    """The version an ``If-Match`` header names (a quoted number, weak or strong)."""
    if if_match is None or if_match.strip() == "*":
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit() or not 1 <= int(tag) <= ID_MAX:
        raise HTTPException(422, "If-Match must be a work order version, e.g. \"7\"")
    return int(tag)


IfMatch = Annotated[int | None, Depends(if_match)]


def guard(body: Guarded | None, header: int | None) -> int | None:
    """The version to check: the body's or the header's (they must agree if both given)."""
    given = body.version if body is not None else None
    if given is not None and header is not None and given != header:
        raise HTTPException(422, "version and If-Match name different versions")
    return given if given is not None else header


def conflict_error(e: Conflict) -> HTTPException:
    """409 with what changed since the caller's version."""
    return HTTPException(409, detail={
        "message": str(e), "number": e.number, "your_version": e.seen,
        "current_version": e.current,
        "changes": [{"at": _iso(c.at), "actor": c.actor, "action": c.action,
                     "detail": c.detail, "version": c.version} for c in e.changes]},
        headers={"ETag": f'"{e.current}"'})


@router.get("/me", summary="The caller")
def api_me(who: ApiWho) -> dict[str, Any]:
    return {"name": who.name, "display_name": who.display_name, "csrf_token": who.csrf}


@router.get("/work-orders", summary="The queue, filtered, nearest due first")
def api_queue(deps: Deps, who: ApiWho, f: Filter) -> dict[str, Any]:
    with deps.reads() as s:
        return _page_json(queue_page(s, deps.policy, f, deps.clock()))


@router.get("/work-orders/{number}", summary="One work order with its thread and audit trail "
            "(``ETag``: its version, for ``If-Match``)")
def api_work_order(deps: Deps, who: ApiWho, number: Number,
                   response: Response) -> dict[str, Any]:
    with deps.reads() as s:
        d = work_order_detail(s, deps.policy, number, deps.clock())
        if d is None:
            raise HTTPException(404, f"no work order {number}")
        response.headers["ETag"] = f'"{d.wo.version}"'
        return _detail_json(d)


@contextlib.contextmanager
def desk_errors(number: str) -> Iterator[None]:
    """The desk's refusals as the API answers them: 404, 409 with the changes, or 422."""
    try:
        yield
    except NotFound:
        raise HTTPException(404, f"no work order {number}") from None
    except Conflict as e:
        raise conflict_error(e) from None
    except ActionError as e:
        raise HTTPException(422, str(e)) from None


def api_call(deps: WebDeps, number: str, fn: Callable[[], object]) -> dict[str, Any]:
    """Run an action; the work order afterwards, or 404/409/422 with the desk's reason."""
    with desk_errors(number):
        fn()
    with deps.reads() as s:
        d = work_order_detail(s, deps.policy, number, deps.clock())
        assert d is not None
        return _detail_json(d)


def _action_route(action: Action) -> None:
    """POST /work-orders/{number}/<api_name>: the action's body (or, for an action without
    one, an optional body with only ``version``) and the collision guard."""
    if action.body is None:
        def endpoint(deps: Deps, who: ApiWho, number: Number, if_match: IfMatch,
                     body: Guarded | None = None) -> dict[str, Any]:
            return api_call(deps, number, lambda: action.call(
                deps.desk, number, who, None, guard(body, if_match)))
    else:
        def endpoint(deps: Deps, who: ApiWho, number: Number,  # type: ignore[misc]
                     body: action.body,  # type: ignore[name-defined]
                     if_match: IfMatch) -> dict[str, Any]:
            return api_call(deps, number, lambda: action.call(
                deps.desk, number, who, body, guard(body, if_match)))

    endpoint.__name__ = f"api_{action.name.replace('-', '_')}"
    router.add_api_route(f"/work-orders/{{number}}/{action.api_name}", endpoint,
                         methods=["POST"], summary=action.summary, responses=CONFLICT_DOC)


for _action in ACTIONS:
    _action_route(_action)


@docs.get("/api/openapi.json")
def openapi(request: Request, who: Who) -> JSONResponse:
    return JSONResponse(request.app.openapi())


# ---- JSON shapes ------------------------------------------------------------------------------
def _iso(t: datetime | None) -> str | None:
    return t.astimezone(UTC).isoformat() if t else None


def _wo_json(wo: WorkOrder) -> dict[str, Any]:
    return {
        "number": wo.number, "subject": wo.subject, "requester": wo.requester,
        "requester_name": wo.requester_name, "request_type": wo.request_type,
        "priority": wo.priority, "status": wo.status, "confidence": round(wo.confidence, 4),
        "needs_review": wo.needs_review, "review_reason": wo.review_reason,
        "assignee": wo.assignee.name if wo.assignee else None, "contract": wo.contract,
        "received_at": _iso(wo.received_at), "response_due": _iso(wo.response_due),
        "callback_due": _iso(wo.callback_due), "fulfil_due": _iso(wo.fulfil_due),
        "next_due": _iso(wo.next_due), "promised_at": _iso(wo.promised_at),
        "first_response_at": _iso(wo.first_response_at), "resolved_at": _iso(wo.resolved_at),
        "called_back_at": _iso(wo.called_back_at), "version": wo.version,
        "merged_into": wo.merged_into.number if wo.merged_into else None,
    }


def _page_json(page: QueuePage) -> dict[str, Any]:
    return {
        "total": page.total, "page": page.page, "pages": page.pages,
        "counts": {"by_type": page.counts.by_type, "needs_review": page.counts.needs_review,
                   "at_risk": page.counts.at_risk, "breached": page.counts.breached,
                   "active": page.counts.active},
        "work_orders": [
            {**_wo_json(r.wo), "client": r.client_name, "sla": r.sla,
             "clock": ({"target": r.clock.target,
                        "business_seconds_left": int(r.clock.state.remaining.total_seconds()),
                        "due": _iso(r.clock.state.due)} if r.clock else None)}
            for r in page.rows],
    }


def _detail_json(d: Detail) -> dict[str, Any]:
    thread = []
    for t in d.thread:
        if t.message is not None:
            m = t.message
            thread.append({"kind": "in", "at": _iso(t.at), "from": m.from_addr,
                           "subject": m.subject, "text": m.body_text,
                           "attachments": [{"id": a.id, "filename": a.filename,
                                            "size": a.size} for a in m.attachments]})
        elif t.outbox is not None:
            o = t.outbox
            thread.append({"kind": o.kind, "at": _iso(t.at), "to": o.to_addr,
                           "status": o.status, "text": (o.context or {}).get("body"),
                           "attachments": [{"id": a.id, "filename": a.filename,
                                            "size": a.size} for a in o.attachments]})
        elif t.event is not None:
            thread.append({"kind": "note", "at": _iso(t.at), "by": t.event.actor,
                           "text": (t.event.detail or {}).get("text")})
    return {
        **_wo_json(d.wo), "client": d.client.name, "client_domain": d.client.domain,
        "timezone": d.timezone, "sla": d.sla,
        "evidence": d.wo.evidence, "cues": d.wo.cues,
        "classifier_version": d.wo.classifier_version,
        "clocks": [{"target": c.target, "due": _iso(c.state.due),
                    "business_seconds_left": int(c.state.remaining.total_seconds()),
                    "fraction_used": round(c.state.fraction_used, 4)} for c in d.clocks],
        "thread": thread,
        "events": [{"at": _iso(e.at), "actor": e.actor, "action": e.action,
                    "detail": e.detail} for e in d.events],
        "history": [{"number": h.wo.number, "subject": h.wo.subject,
                     "requester": h.wo.requester, "same_requester": h.same_requester,
                     "request_type": h.wo.request_type, "priority": h.wo.priority,
                     "status": h.wo.status, "received_at": _iso(h.wo.received_at),
                     "resolved_at": _iso(h.wo.resolved_at)} for h in d.history],
    }


__all__ = ["CONFLICT_DOC", "IfMatch", "api_call", "conflict_error", "docs", "guard",
           "if_match", "router"]
