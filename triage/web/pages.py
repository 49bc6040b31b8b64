"""The staff pages: the queue, a work order with its thread, attachments, and the forms of
the work-order actions (one route per row of ``triage.web.actions.ACTIONS``).

Handlers are plain ``def``: FastAPI runs them in its thread pool, so database work never
blocks the loop that polls the mailbox. A form action answers with a redirect carrying a done
key (``triage.web.alerts``), or renders the page again with the action's error.
"""

import logging
import re
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import nh3
from fastapi import APIRouter, Depends, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import select

from triage.desk.actions import STATUSES, ActionError, Conflict, NotFound
from triage.desk.canned import listing as canned_listing
from triage.desk.live import present
from triage.desk.queue import (
    ACTIVE,
    SLA_FILTERS,
    STATUS_FILTERS,
    Detail,
    QueueFilter,
    attachment_for,
    queue_page,
    staff_names,
    work_order_detail,
)
from triage.desk.sent import SentAcks
from triage.desk.uploads import UploadRefused
from triage.storage.models import Outbox, WorkOrder
from triage.web.actions import ACTIONS, Action, FormContext
from triage.web.alerts import done_text
from triage.web.auth import Principal, Who, check_csrf
from triage.web.deps import Deps, Number, Render, Renderer, RowId, WebDeps
from triage.web.params import known, list_links

log = logging.getLogger(__name__)

HTML_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "div", "em", "font", "h1", "h2",
             "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s", "small", "span",
             "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul"}
HTML_ATTRS: dict[str, set[str]] = {"a": {"href", "title"}, "td": {"colspan", "rowspan"},
                                   "th": {"colspan", "rowspan"}}

router = APIRouter(include_in_schema=False)


def clean_html(html: str) -> tuple[str, bool]:
    """Sanitised HTML and whether remote content (images) was removed."""
    blocked = bool(re.search(r"<\s*img\b|url\s*\(", html, re.I))
    cleaned = nh3.clean(html, tags=HTML_TAGS, attributes=HTML_ATTRS,
                        url_schemes={"http", "https", "mailto"},
                        link_rel="noopener noreferrer nofollow", strip_comments=True)
    return cleaned, blocked


def ack_text(acks: SentAcks, row: Outbox, d: Detail) -> str:
    """The acknowledgment's words; a row that no longer renders (a request type since
    removed from the policy, say) says so instead of failing the page."""
    try:
        return acks.text(row, d.wo, d.events)
    except Exception:
        log.exception("rendering acknowledgment %s for the page failed", row.id)
        return "(this acknowledgment cannot be rendered again; see the log)"


async def invalid_request(request: Request, exc: Exception) -> Response:
    """The API answers FastAPI's JSON; a page says which field, without echoing it."""
    assert isinstance(exc, RequestValidationError)
    if request.url.path.startswith("/api/"):
        return await request_validation_exception_handler(request, exc)
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
        for e in exc.errors()[:5])
    render: Renderer = request.app.state.render
    return render("error", 422, who=None, title="Not a valid request", message=problems[:500])


def queue_filter(
    deps: Deps,
    type: Annotated[str | None, Query(max_length=64)] = None,
    priority: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str, Query(max_length=64)] = ACTIVE,
    assignee: Annotated[str | None, Query(max_length=64)] = None,
    review: Annotated[str | None, Query(max_length=8)] = None,
    sla: Annotated[str | None, Query(max_length=64)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    per_page: Annotated[int, Query(ge=1, le=200)] = 50,
) -> QueueFilter:
    """The queue's filters from the query string (the page and the API share them)."""
    policy = deps.policy
    return QueueFilter(
        request_type=known(type, policy.types), priority=known(priority, policy.priorities),
        status=known(status, STATUS_FILTERS) or ACTIVE, assignee=assignee or None,
        needs_review={"yes": True, "no": False}.get(review or ""),
        sla=known(sla, SLA_FILTERS), q=(q or "").strip() or None, page=page,
        page_size=per_page)


Filter = Annotated[QueueFilter, Depends(queue_filter)]


@router.get("/")
def home(who: Who) -> Response:
    return RedirectResponse("/queue", status_code=303)


@router.get("/static/app.css")
def css(deps: Deps) -> Response:
    return FileResponse(deps.templates_dir / "web" / "app.css", media_type="text/css",
                        headers={"Cache-Control": "max-age=3600"})


def list_scripts(templates_dir: Path) -> dict[str, Path]:
    """The pages' scripts by name: ``templates/web/js/*.js`` (``app.state.scripts``)."""
    return {p.stem: p for p in (templates_dir / "web" / "js").glob("*.js")}


@router.get("/static/js/{name}.js")
def script(request: Request, name: Annotated[str, PathParam(max_length=64)]) -> Response:
    """The pages' optional enhancements, one same-origin file a feature (the CSP allows
    only 'self'); a name outside the folder's listing at startup is a 404."""
    scripts: dict[str, Path] = request.app.state.scripts
    if name not in scripts:
        raise HTTPException(404, "no such script")
    return FileResponse(scripts[name], media_type="text/javascript",
                        headers={"Cache-Control": "max-age=300"})


@router.get("/queue")
def queue(deps: Deps, render: Render, who: Who, f: Filter) -> Response:
    now = deps.clock()
    policy = deps.policy
    with deps.reads() as s:
        page = queue_page(s, policy, f, now)
        staff = staff_names(s)
        return render("queue", session=s, who=who, f=f, page=page, now=now, staff=staff,
                      types=policy.types, priorities=policy.priorities,
                      statuses=STATUS_FILTERS, sla_filters=SLA_FILTERS,
                      **list_links("/queue", f))


@router.get("/work-orders/{number}")
def work_order_page(deps: Deps, render: Render, who: Who, number: Number,
                    done: Annotated[str, Query(max_length=100)] = "") -> Response:
    return work_order_view(deps, render, who, number, done=done_text(done))


def work_order_view(deps: WebDeps, render: Renderer, who: Principal, number: str, *,
                    done: str = "", error: str = "", status: int = 200,
                    conflict: Conflict | None = None,
                    drafts: dict[str, str] | None = None) -> Response:
    """The page, with a done message (a key from ``DONE``) or the error of the action
    just posted (the server's own text, never from the URL); after a refused action
    (``conflict``) it lists the changes since the sender's page and gives back what
    they typed (``drafts``)."""
    now = deps.clock()
    policy = deps.policy
    with deps.reads() as s:
        d = work_order_detail(s, policy, number, now)
        if d is None:
            return render("error", 404, session=s, who=who, title="Not found",
                          message=f"No work order {number}.")
        bodies = {}
        ack_texts: dict[int, str] = {}
        for item in d.thread:
            if item.message is not None and item.message.body_html:
                bodies[item.message.id] = clean_html(item.message.body_html)
            if item.outbox is not None and item.kind == "ack" and deps.acks is not None:
                ack_texts[item.outbox.id] = ack_text(deps.acks, item.outbox, d)
        # Who else has it open as the page is made (templates/web/js/live.js keeps it current).
        presence = present(s, number, now, besides=who.user_id).others
        return render("work_order", status, session=s, who=who, d=d, wo=d.wo, now=now,
                      presence=presence, bodies=bodies, ack_texts=ack_texts, staff=staff_names(s),
                      types=policy.types, priorities=policy.priorities, statuses=STATUSES,
                      done=done, error=error[:300], conflict=conflict, drafts=drafts or {},
                      canned=canned_listing(s, d.wo.request_type),
                      upload_limits=deps.upload_limits)


@router.get("/work-orders/{number}/attachments/{attachment_id}")
def attachment(deps: Deps, who: Who, number: Number, attachment_id: RowId) -> Response:
    with deps.reads() as s:
        row = attachment_for(s, number, attachment_id)
    if row is None:
        raise HTTPException(404, "no such attachment")
    path = Path(row.path)
    if not path.is_absolute():
        path = deps.attachments_dir / path
    if not path.is_file():
        raise HTTPException(410, "the attachment's file is gone")
    name = re.sub(r"[\x00-\x1f\x7f\"\\/]", "_", row.filename or "attachment")[:200]
    ascii_name = name.encode("ascii", "replace").decode().replace("?", "_")
    return FileResponse(path, media_type="application/octet-stream", headers={
        "Content-Disposition": (f"attachment; filename=\"{ascii_name}\"; "
                                f"filename*=UTF-8''{quote(name)}"),
    })


# ---- the actions' forms -----------------------------------------------------------------------
def zone_of(deps: WebDeps, render: Renderer, number: str) -> str:
    """The time zone of the work order's contract (a form's local times are read in it)."""
    with deps.reads() as s:
        contract = s.scalar(select(WorkOrder.contract).where(WorkOrder.number == number))
    if contract is None:
        raise NotFound(number)
    return render.tz_of_contract(contract)


def act(deps: WebDeps, render: Renderer, who: Principal, number: str, action: Action,
        form: Any) -> Response:
    """Run ``action`` from its form; back to the page with its done key, or the page again
    with the error and what was typed (after a conflict, with what changed too)."""
    check_csrf(who, form.csrf_token)
    drafts = action.drafts(form) if action.drafts else None
    try:
        body = action.from_form(form, FormContext(deps, lambda: zone_of(deps, render, number)))
        action.call(deps.desk, number, who, body, form.version)
    except NotFound:
        raise HTTPException(404, f"no work order {number}") from None
    except Conflict as e:  # the page was stale: show what changed, keep what was typed
        return work_order_view(deps, render, who, number, error=str(e), status=409,
                               conflict=e, drafts=drafts)
    except UploadRefused as e:  # nothing was stored: the files to choose again are moot
        typed = {k: v for k, v in (drafts or {}).items() if k != "files"}
        return work_order_view(deps, render, who, number, error=str(e), status=e.status,
                               drafts=typed)
    except ActionError as e:
        return work_order_view(deps, render, who, number, error=str(e), status=422)
    done = action.done_of(body) if action.done_of else action.done
    target = f"/work-orders/{quote(number)}"
    return RedirectResponse(f"{target}?{urlencode({'done': done})}", status_code=303)


def _form_route(action: Action) -> None:
    def endpoint(deps: Deps, render: Render, who: Who, number: Number,
                 form: Annotated[action.form, Form()]) -> Response:  # type: ignore[name-defined]
        return act(deps, render, who, number, action, form)

    endpoint.__name__ = f"form_{action.name.replace('-', '_')}"
    router.add_api_route(f"/work-orders/{{number}}/{action.name}", endpoint, methods=["POST"])


for _action in ACTIONS:
    _form_route(_action)

__all__ = ["Filter", "act", "clean_html", "invalid_request", "list_scripts", "queue_filter",
           "router", "work_order_view"]
