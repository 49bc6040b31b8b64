"""The JSON API under /api/v1: the queue, one work order, and the work-order actions (one
route per row of ``triage.web.actions.ACTIONS``), for an API token
(``Authorization: Bearer itx_...``) or a signed-in session with ``X-CSRF-Token``.
"""

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

from triage.desk.actions import ActionError, NotFound
from triage.desk.queue import Detail, QueuePage, queue_page, work_order_detail
from triage.storage.models import WorkOrder
from triage.web.actions import ACTIONS, Action
from triage.web.auth import ApiWho, Who
from triage.web.deps import Deps, Number, WebDeps
from triage.web.pages import Filter

router = APIRouter(prefix="/api/v1", tags=["work orders"])
# The OpenAPI document, for a signed-in caller only (not part of the document itself).
docs = APIRouter(include_in_schema=False)


@router.get("/me", summary="The caller")
def api_me(who: ApiWho) -> dict[str, Any]:
    return {"name": who.name, "display_name": who.display_name, "csrf_token": who.csrf}


@router.get("/work-orders", summary="The queue, filtered, nearest due first")
def api_queue(deps: Deps, who: ApiWho, f: Filter) -> dict[str, Any]:
    with deps.reads() as s:
        return _page_json(queue_page(s, deps.policy, f, deps.clock()))


@router.get("/work-orders/{number}", summary="One work order with its thread and audit trail")
def api_work_order(deps: Deps, who: ApiWho, number: Number) -> dict[str, Any]:
    with deps.reads() as s:
        d = work_order_detail(s, deps.policy, number, deps.clock())
        if d is None:
            raise HTTPException(404, f"no work order {number}")
        return _detail_json(d)


def api_call(deps: WebDeps, number: str, fn: Callable[[], object]) -> dict[str, Any]:
    """Run an action; the work order afterwards, or 404/422 with the desk's reason."""
    try:
        fn()
    except NotFound:
        raise HTTPException(404, f"no work order {number}") from None
    except ActionError as e:
        raise HTTPException(422, str(e)) from None
    with deps.reads() as s:
        d = work_order_detail(s, deps.policy, number, deps.clock())
        assert d is not None
        return _detail_json(d)


def _action_route(action: Action) -> None:
    if action.body is None:
        def endpoint(deps: Deps, who: ApiWho, number: Number) -> dict[str, Any]:
            return api_call(deps, number,
                            lambda: action.call(deps.desk, number, who, None, None))
    else:
        def endpoint(deps: Deps, who: ApiWho, number: Number,  # type: ignore[misc]
                     body: action.body) -> dict[str, Any]:  # type: ignore[name-defined]
            return api_call(deps, number,
                            lambda: action.call(deps.desk, number, who, body, None))

    endpoint.__name__ = f"api_{action.name.replace('-', '_')}"
    router.add_api_route(f"/work-orders/{{number}}/{action.api_name}", endpoint,
                         methods=["POST"], summary=action.summary)


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


__all__ = ["api_call", "docs", "router"]
