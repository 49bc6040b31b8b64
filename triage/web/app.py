"""The staff web app and JSON API, served by the daemon's own event loop (FastAPI on uvicorn)
beside the ops endpoints.

Pages are rendered on the server from ``templates/web`` (Jinja2, autoescaped); there is no
build step and no script is needed to use them. Handlers are plain ``def``: FastAPI runs
them in its thread pool, so database work never blocks the loop that polls the mailbox.

Security, in one place:
- every route but /login, /healthz, /readyz (and /metrics, which has its own bearer token)
  needs a signed-in session or, under /api, an API token (``Authorization: Bearer itx_...``);
- sessions live in the database (logout ends them); the cookie is HttpOnly, SameSite=Lax and
  Secure unless configured off; the login form has its own double-submit CSRF token;
- every state-changing form carries the session's CSRF token, and a cookie-authenticated API
  call must send it as ``X-CSRF-Token`` (a bearer token is not ambient, so needs none);
- client content is escaped everywhere; HTML bodies are cleaned with nh3 (no scripts, no
  styles, no remote images) and the Content-Security-Policy forbids inline script anyway;
- attachments download as ``application/octet-stream`` with ``Content-Disposition:
  attachment``; ``next`` after login must be a local path;
- ``POST /login`` is rate-limited per client address and overall (``triage.web.throttle``,
  429 with ``Retry-After``), repeated failures are slowed per name and address
  (``triage.desk.logins``), and argon2 runs outside any write transaction on a thread of its
  own, so a login flood neither holds the database's write lock nor fills the thread pool
  the pages share;
- every id, number and date a route accepts is bounded (a 4xx that says why, never a 500);
  alerts come from fixed keys (``triage.web.alerts``), and client text is bidi-isolated.
"""

import asyncio
import hmac
import logging
import math
import re
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

import nh3
from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.routing import BaseRoute

from triage import security
from triage.desk import logins, users
from triage.desk.actions import STATUS_LABELS, STATUSES, ActionError, Conflict, Desk, NotFound
from triage.desk.live import present
from triage.desk.queue import (
    ACTIVE,
    SLA_FILTERS,
    STATUS_FILTERS,
    Detail,
    QueueFilter,
    QueuePage,
    attachment_for,
    format_remaining,
    queue_page,
    staff_names,
    work_order_detail,
)
from triage.desk.screened import Screening, awaiting_count
from triage.desk.sent import SentAcks
from triage.metrics import Metrics
from triage.resources import TEMPLATES_DIR
from triage.sla import SlaPolicy
from triage.storage.models import Outbox, WorkOrder
from triage.web.alerts import LOGIN_ALERTS, bidi, done_text
from triage.web.live import CONFLICT_DOC, Guarded, IfMatch, LiveRoutes, conflict_error, guard
from triage.web.params import known
from triage.web.screened import ScreenedRoutes
from triage.web.throttle import LoginBuckets, LoginThrottleMiddleware

log = logging.getLogger(__name__)

SESSION_COOKIE = "itx_session"
LOGIN_CSRF_COOKIE = "itx_login_csrf"
CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; script-src 'self'; connect-src 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}
SAFE_NEXT = re.compile(r"^/(?![/\\])[^\s\\]*$")
HTML_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "div", "em", "font", "h1", "h2",
             "h3", "h4", "h5", "h6", "hr", "i", "li", "ol", "p", "pre", "s", "small", "span",
             "strong", "sub", "sup", "table", "tbody", "td", "th", "thead", "tr", "u", "ul"}
HTML_ATTRS: dict[str, set[str]] = {"a": {"href", "title"}, "td": {"colspan", "rowspan"},
                                   "th": {"colspan", "rowspan"}}
# Work order numbers as the store makes them (ITX- and at least six digits).
NUMBER_PATTERN = r"^ITX-\d{6,12}$"
ID_MAX = 2**31 - 1  # database ids are 32-bit on PostgreSQL
Number = Annotated[str, PathParam(pattern=NUMBER_PATTERN, description="e.g. ITX-000123")]
RowId = Annotated[int, PathParam(ge=1, le=ID_MAX)]
Short = Annotated[str, Form(max_length=64)]


@dataclass
class WebDeps:
    sessions: sessionmaker[Session]  # writes
    reads: sessionmaker[Session]
    policy: SlaPolicy
    desk: Desk
    attachments_dir: Path
    clock: Callable[[], datetime]
    cookie_secure: bool = True
    session_ttl: timedelta = users.SESSION_TTL
    screening: Screening | None = None  # the Screened view's actions (None: list only)
    templates_dir: Path = TEMPLATES_DIR  # the templates_dir setting, else the shipped ones
    acks: SentAcks | None = None  # renders sent acknowledgments (None: shown without text)
    metrics: Metrics | None = None  # the failed-login counter (None: not counted)
    login_buckets: LoginBuckets | None = None  # None: the default limits


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    display_name: str
    csrf: str | None  # None for API-token callers (no ambient credential, no CSRF)


class LoginRequired(Exception):
    pass


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        h = response.headers
        for name, value in SECURITY_HEADERS.items():
            h.setdefault(name, value)
        if request.url.path not in ("/metrics", "/healthz", "/readyz", "/static/app.css") \
                and not request.url.path.startswith("/static/js/"):
            h.setdefault("Cache-Control", "no-store")
        return response


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (other hosts, schemes) is /queue."""
    if target and SAFE_NEXT.match(target) and len(target) < 2000:
        return target
    return "/queue"


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


def make_templates(templates_dir: Path = TEMPLATES_DIR) -> Environment:
    env = Environment(loader=FileSystemLoader(templates_dir), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["remaining"] = format_remaining
    env.filters["label"] = lambda v: str(v).replace("_", " ")
    env.filters["bidi"] = bidi
    env.globals["STATUS_LABELS"] = STATUS_LABELS
    return env


def create_web_app(deps: WebDeps, *, extra_routes: list[BaseRoute] | None = None) -> FastAPI:
    app = FastAPI(title="ITX Triage staff API", version="1",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(SecurityHeaders)
    # Outermost: a throttled login is answered before routing and form parsing.
    buckets = deps.login_buckets or LoginBuckets()
    app.add_middleware(LoginThrottleMiddleware, buckets=buckets, metrics=deps.metrics,
                       headers=SECURITY_HEADERS)
    templates = make_templates(deps.templates_dir)
    policy = deps.policy

    def local(t: datetime | None, tz: str) -> str:
        if t is None:
            return "—"
        try:
            return t.astimezone(ZoneInfo(tz)).strftime("%a %d %b %Y %H:%M %Z")
        except (OverflowError, ValueError):  # a time at the edge of the calendar: show it as is
            return t.isoformat()

    templates.filters["local"] = local

    def tz_of_contract(contract: str) -> str:
        return policy.calendar(contract).tz.key if contract in policy.calendars else "UTC"

    templates.globals["tz_of"] = tz_of_contract

    def render(name: str, status: int = 200, *, session: Session | None = None,
               **ctx: Any) -> HTMLResponse:
        """``session``: the caller's open read session, if any. A second one per request
        would let concurrent requests each hold one pooled connection while waiting for
        another, until the pool's timeout (20 concurrent queue requests did)."""
        if ctx.get("who"):  # the navigation's count of screened mail awaiting a look
            if session is not None:
                ctx["screened_awaiting"] = awaiting_count(session, deps.clock())
            else:
                with deps.reads() as s:
                    ctx["screened_awaiting"] = awaiting_count(s, deps.clock())
        html = templates.get_template(f"web/{name}.html.j2").render(**ctx)
        return HTMLResponse(html, status_code=status)

    # ---- identity ------------------------------------------------------------------------
    # argon2 gets one thread of its own: a login flood queues here, not in the thread pool
    # the pages use, and keeps at least one core for everything else.
    argon2 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2")

    def client_of(request: Request) -> str:
        return request.client.host if request.client else "unknown"

    def principal(request: Request) -> Principal:
        now = deps.clock()
        token = request.cookies.get(SESSION_COOKIE, "")
        with deps.reads() as s:
            row = users.session_for(s, token, now) if token else None
            if row is not None:
                return Principal(row.user.id, row.user.name, row.user.display_name,
                                 row.csrf_token)
            auth = request.headers.get("authorization", "")
            if not (request.url.path.startswith("/api/") and auth[:7].lower() == "bearer "):
                raise LoginRequired
            user = users.user_for_api_token(s, auth[7:].strip()[:200])
            if user is None:
                security.event("api_token_refused", level=logging.WARNING,
                               client=client_of(request))
                raise LoginRequired
            who = Principal(user.id, user.name, user.display_name, None)
            used = user.api_token_used_at
        if used is None or used < now - users.TOKEN_USE_RESOLUTION:
            with deps.sessions.begin() as s:
                if users.note_token_use(s, who.user_id, now):
                    security.event("api_token_used", user=who.name, client=client_of(request))
        return who

    Who = Annotated[Principal, Depends(principal)]

    def check_csrf(who: Principal, given: str | None) -> None:
        if who.csrf is None:
            return
        if not given or not hmac.compare_digest(given.encode(), who.csrf.encode()):
            raise HTTPException(403, "CSRF token missing or wrong; reload the page")

    @app.exception_handler(LoginRequired)
    async def _login_required(request: Request, exc: LoginRequired) -> Response:
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "login required"}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        """The API answers FastAPI's JSON; a page says which field, without echoing it."""
        if request.url.path.startswith("/api/"):
            return await request_validation_exception_handler(request, exc)
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ())[1:]) or 'request'}: {e.get('msg')}"
            for e in exc.errors()[:5])
        return render("error", 422, who=None, title="Not a valid request",
                      message=problems[:500])

    # ---- login ---------------------------------------------------------------------------
    def login_page(next_: str, alert: str = "", status: int = 200,
                   retry_after: float = 0) -> Response:
        """The login form with one of ``LOGIN_ALERTS`` (never text from the request)."""
        token = secrets.token_urlsafe(24)
        seconds = max(1, math.ceil(retry_after))
        message = LOGIN_ALERTS[alert].format(seconds=seconds) if alert else ""
        resp = render("login", status, next=safe_next(next_), csrf=token, error=message)
        resp.set_cookie(LOGIN_CSRF_COOKIE, token, httponly=True, samesite="strict",
                        secure=deps.cookie_secure, max_age=3600, path="/login")
        if retry_after:
            resp.headers["Retry-After"] = str(seconds)
        return resp

    def refused(reason: str) -> None:
        if deps.metrics is not None:
            deps.metrics.observe_login_failure(reason)

    @app.get("/login", include_in_schema=False)
    def login_form(request: Request,
                   next: Annotated[str, Query(max_length=2000)] = "/queue") -> Response:
        return login_page(next)

    def begin_login(name: str, client: str,
                    now: datetime) -> tuple[logins.Attempt, users.Credentials]:
        with deps.sessions.begin() as s:  # short: counts the attempt, then commits
            attempt = logins.reserve(s, name, client, now)
        with deps.reads() as s:
            return attempt, users.credentials_for(s, name)

    def finish_login(creds: users.Credentials, name: str, client: str, now: datetime,
                     new_hash: str | None, old_session: str | None) -> str | None:
        with deps.sessions.begin() as s:
            assert creds.user_id is not None
            user = users.record_success(s, creds.user_id, now, new_hash)
            if user is None:
                return None
            logins.succeeded(s, name, client, now)
            if old_session:
                users.end_session(s, old_session)
            token, _ = users.create_session(s, user, now, deps.session_ttl)
            return token

    def failed_login(user_id: int) -> None:
        with deps.sessions.begin() as s:
            users.record_failure(s, user_id)

    @app.post("/login", include_in_schema=False)
    async def login(request: Request, name: Annotated[str, Form(max_length=64)],
                    password: Annotated[str, Form(max_length=1024)],
                    csrf_token: Annotated[str, Form(max_length=200)] = "",
                    next: Annotated[str, Form(max_length=2000)] = "/queue") -> Response:
        """Async, so that a refused attempt costs no thread: the database steps run in the
        thread pool, argon2 on its own thread, and nothing holds a write transaction while
        the password is checked."""
        client = client_of(request)
        typed = logins.normal_name(name)
        cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie.encode(), csrf_token.encode()):
            return login_page(next, "expired")
        now = deps.clock()
        attempt, creds = await run_in_threadpool(begin_login, typed, client, now)
        if not attempt.allowed:
            delay = attempt.retry_after.total_seconds()
            refused("delayed")
            security.event("login_delayed", level=logging.WARNING, user=typed, client=client,
                           retry_after=round(delay, 1))
            return login_page(next, "delayed", 429, retry_after=delay)
        if attempt.delay_started:
            security.event("login_delay_started", level=logging.WARNING, user=typed,
                           client=client)
        loop = asyncio.get_running_loop()
        ok = await loop.run_in_executor(argon2, users.verify_password, creds.password_hash,
                                        password)
        token = None
        if ok and creds.user_id is not None:
            new_hash = await loop.run_in_executor(argon2, users.rehash_if_needed,
                                                  creds.password_hash, password)
            token = await run_in_threadpool(finish_login, creds, typed, client, now, new_hash,
                                            request.cookies.get(SESSION_COOKIE))
        elif creds.user_id is not None:
            await run_in_threadpool(failed_login, creds.user_id)
        if token is None:
            refused("credentials")
            security.event("login_failed", level=logging.WARNING, user=typed, client=client)
            return login_page(next, "credentials", 401)
        security.event("login", user=typed, client=client)
        buckets.known_good(client)
        resp = RedirectResponse(safe_next(next), status_code=303)
        resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                        secure=deps.cookie_secure, max_age=int(deps.session_ttl.total_seconds()),
                        path="/")
        resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request, who: Who,
               csrf_token: Annotated[str, Form(max_length=200)] = "") -> Response:
        check_csrf(who, csrf_token)
        with deps.sessions.begin() as s:
            users.end_session(s, request.cookies.get(SESSION_COOKIE, ""))
        security.event("logout", user=who.name, client=client_of(request))
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    # ---- pages ---------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def home(who: Who) -> Response:
        return RedirectResponse("/queue", status_code=303)

    @app.get("/static/app.css", include_in_schema=False)
    def css() -> Response:
        return FileResponse(deps.templates_dir / "web" / "app.css", media_type="text/css",
                            headers={"Cache-Control": "max-age=3600"})

    scripts = {p.stem: p for p in (deps.templates_dir / "web" / "js").glob("*.js")}

    @app.get("/static/js/{name}.js", include_in_schema=False)
    def script(name: Annotated[str, PathParam(max_length=64)]) -> Response:
        """The pages' optional enhancements, one same-origin file a feature (the CSP allows
        only 'self'); a name outside the folder's listing at startup is a 404."""
        if name not in scripts:
            raise HTTPException(404, "no such script")
        return FileResponse(scripts[name], media_type="text/javascript",
                            headers={"Cache-Control": "max-age=300"})

    def queue_filter(
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
        return QueueFilter(
            request_type=known(type, policy.types), priority=known(priority, policy.priorities),
            status=known(status, STATUS_FILTERS) or ACTIVE, assignee=assignee or None,
            needs_review={"yes": True, "no": False}.get(review or ""),
            sla=known(sla, SLA_FILTERS), q=(q or "").strip() or None, page=page,
            page_size=per_page)

    Filter = Annotated[QueueFilter, Depends(queue_filter)]

    @app.get("/queue", include_in_schema=False)
    def queue(who: Who, f: Filter) -> Response:
        now = deps.clock()
        with deps.reads() as s:
            page = queue_page(s, policy, f, now)
            staff = staff_names(s)
            resp = render("queue", session=s, who=who, f=f, page=page, now=now, staff=staff,
                          types=policy.types, priorities=policy.priorities,
                          statuses=STATUS_FILTERS, sla_filters=SLA_FILTERS,
                          link=lambda **kw: "/queue?" + urlencode(f.query_args(**kw)),
                          page_link=lambda n: "/queue?" + urlencode(
                              {**f.query_args(), "page": str(n)}))
        return resp

    @app.get("/work-orders/{number}", include_in_schema=False)
    def work_order_page(who: Who, number: Number,
                        done: Annotated[str, Query(max_length=100)] = "") -> Response:
        return work_order_view(who, number, done=done_text(done))

    def work_order_view(who: Principal, number: str, *, done: str = "", error: str = "",
                        status: int = 200, conflict: Conflict | None = None,
                        drafts: dict[str, str] | None = None) -> Response:
        """The page, with a done message (a key from ``DONE``) or the error of the action
        just posted (the server's own text, never from the URL); after a refused action
        (``conflict``) it lists the changes since the sender's page and gives back what
        they typed (``drafts``)."""
        now = deps.clock()
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
            presence = present(s, number, now, besides=who.user_id).others
            return render("work_order", status, session=s, who=who, d=d, wo=d.wo, now=now,
                          presence=presence,
                          bodies=bodies, ack_texts=ack_texts, staff=staff_names(s),
                          types=policy.types,
                          priorities=policy.priorities, statuses=STATUSES,
                          done=done, error=error[:300], conflict=conflict,
                          drafts=drafts or {})

    @app.get("/work-orders/{number}/attachments/{attachment_id}", include_in_schema=False)
    def attachment(who: Who, number: Number, attachment_id: RowId) -> Response:
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

    # ---- actions (forms) -----------------------------------------------------------------
    def act(who: Principal, number: str, csrf: str, label: str,
            fn: Callable[[], object], drafts: dict[str, str] | None = None) -> Response:
        check_csrf(who, csrf)
        target = f"/work-orders/{quote(number)}"
        try:
            fn()
        except NotFound:
            raise HTTPException(404, f"no work order {number}") from None
        except Conflict as e:  # the page was stale: show what changed, keep what was typed
            return work_order_view(who, number, error=str(e), status=409, conflict=e,
                                   drafts=drafts)
        except ActionError as e:
            return work_order_view(who, number, error=str(e), status=422)
        return RedirectResponse(f"{target}?{urlencode({'done': label})}", status_code=303)

    Csrf = Annotated[str, Form(max_length=200)]
    # The work order's version the form's page showed (the collision guard); absent: no guard.
    Version = Annotated[int | None, Form(ge=1, le=ID_MAX)]

    @app.post("/work-orders/{number}/reclassify", include_in_schema=False)
    def f_reclassify(who: Who, number: Number, csrf_token: Csrf,
                     request_type: Short, priority: Short, version: Version = None) -> Response:
        return act(who, number, csrf_token, "reclassified",
                   lambda: deps.desk.reclassify(number, who.name, request_type, priority,
                                                version=version))

    @app.post("/work-orders/{number}/assign", include_in_schema=False)
    def f_assign(who: Who, number: Number, csrf_token: Csrf,
                 assignee: Annotated[str, Form(max_length=64)] = "",
                 version: Version = None) -> Response:
        return act(who, number, csrf_token, "assigned",
                   lambda: deps.desk.assign(number, who.name, assignee or None,
                                            version=version))

    @app.post("/work-orders/{number}/promise", include_in_schema=False)
    def f_promise(who: Who, number: Number, csrf_token: Csrf,
                  promised: Annotated[str, Form(max_length=64)] = "",
                  version: Version = None) -> Response:
        def run() -> None:
            deps.desk.promise(number, who.name, _local_datetime(promised, _tz_of(number)),
                              version=version)
        return act(who, number, csrf_token, "promise set", run)

    @app.post("/work-orders/{number}/status", include_in_schema=False)
    def f_status(who: Who, number: Number, csrf_token: Csrf,
                 status: Short, version: Version = None) -> Response:
        return act(who, number, csrf_token, "status changed",
                   lambda: deps.desk.set_status(number, who.name, status, version=version))

    @app.post("/work-orders/{number}/note", include_in_schema=False)
    def f_note(who: Who, number: Number, csrf_token: Csrf,
               text: Annotated[str, Form(max_length=20_000)],
               version: Version = None) -> Response:
        return act(who, number, csrf_token, "note added",
                   lambda: deps.desk.note(number, who.name, text, version=version),
                   drafts={"note": text})

    @app.post("/work-orders/{number}/reply", include_in_schema=False)
    def f_reply(who: Who, number: Number, csrf_token: Csrf,
                body: Annotated[str, Form(max_length=50_000)],
                wait: Annotated[str, Form(max_length=8)] = "",
                version: Version = None) -> Response:
        return act(who, number, csrf_token, "reply queued",
                   lambda: deps.desk.reply(number, who.name, body, wait_for_client=bool(wait),
                                           agent_name=who.display_name, version=version),
                   drafts={"reply": body})

    @app.post("/work-orders/{number}/called-back", include_in_schema=False)
    def f_called_back(who: Who, number: Number, csrf_token: Csrf,
                      text: Annotated[str, Form(max_length=20_000)] = "",
                      version: Version = None) -> Response:
        return act(who, number, csrf_token, "call back logged",
                   lambda: deps.desk.called_back(number, who.name, text, version=version),
                   drafts={"call": text})

    @app.post("/work-orders/{number}/resolve", include_in_schema=False)
    def f_resolve(who: Who, number: Number, csrf_token: Csrf,
                  version: Version = None) -> Response:
        return act(who, number, csrf_token, "resolved",
                   lambda: deps.desk.resolve(number, who.name, version=version))

    @app.post("/work-orders/{number}/reopen", include_in_schema=False)
    def f_reopen(who: Who, number: Number, csrf_token: Csrf,
                 version: Version = None) -> Response:
        return act(who, number, csrf_token, "reopened",
                   lambda: deps.desk.reopen(number, who.name, version=version))

    def _tz_of(number: str) -> str:
        with deps.reads() as s:
            contract = s.scalar(select(WorkOrder.contract).where(WorkOrder.number == number))
        if contract is None:
            raise NotFound(number)
        return tz_of_contract(contract)

    # ---- JSON API ------------------------------------------------------------------------
    api = APIRouter(prefix="/api/v1", tags=["work orders"])

    def api_csrf(request: Request, who: Who) -> Principal:
        if request.method not in ("GET", "HEAD"):
            check_csrf(who, request.headers.get("x-csrf-token"))
        return who

    ApiWho = Annotated[Principal, Depends(api_csrf)]

    def api_call(number: str, fn: Callable[[], WorkOrder]) -> dict[str, Any]:
        try:
            fn()
        except NotFound:
            raise HTTPException(404, f"no work order {number}") from None
        except Conflict as e:
            raise conflict_error(e) from None
        except ActionError as e:
            raise HTTPException(422, str(e)) from None
        with deps.reads() as s:
            d = work_order_detail(s, policy, number, deps.clock())
            assert d is not None
            return _detail_json(d)

    @api.get("/me", summary="The caller")
    def api_me(who: ApiWho) -> dict[str, Any]:
        return {"name": who.name, "display_name": who.display_name, "csrf_token": who.csrf}

    @api.get("/work-orders", summary="The queue, filtered, nearest due first")
    def api_queue(who: ApiWho, f: Filter) -> dict[str, Any]:
        with deps.reads() as s:
            return _page_json(queue_page(s, policy, f, deps.clock()))

    @api.get("/work-orders/{number}", summary="One work order with its thread and audit trail "
             "(``ETag``: its version, for ``If-Match``)")
    def api_work_order(who: ApiWho, number: Number, response: Response) -> dict[str, Any]:
        with deps.reads() as s:
            d = work_order_detail(s, policy, number, deps.clock())
            if d is None:
                raise HTTPException(404, f"no work order {number}")
            response.headers["ETag"] = f'"{d.wo.version}"'
            return _detail_json(d)

    # Every action takes the collision guard's version (body or If-Match; triage.web.live).
    @api.post("/work-orders/{number}/reclassify", summary="Set type and priority (recomputes "
              "the due dates; kept as training data)", responses=CONFLICT_DOC)
    def api_reclassify(who: ApiWho, number: Number, body: Reclassify,
                       if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.reclassify(
            number, who.name, body.request_type, body.priority, version=guard(body, if_match)))

    @api.post("/work-orders/{number}/assign", summary="Assign (null: unassign)",
              responses=CONFLICT_DOC)
    def api_assign(who: ApiWho, number: Number, body: Assign,
                   if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.assign(number, who.name, body.assignee,
                                                         version=guard(body, if_match)))

    @api.post("/work-orders/{number}/promise", summary="Set or clear the promised date",
              responses=CONFLICT_DOC)
    def api_promise(who: ApiWho, number: Number, body: Promise,
                    if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.promise(number, who.name, body.promised_at,
                                                          version=guard(body, if_match)))

    @api.post("/work-orders/{number}/status", summary="Change status (waiting_client pauses "
              "the SLA clocks)", responses=CONFLICT_DOC)
    def api_status(who: ApiWho, number: Number, body: StatusChange,
                   if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.set_status(number, who.name, body.status,
                                                             version=guard(body, if_match)))

    @api.post("/work-orders/{number}/notes", summary="Add an internal note",
              responses=CONFLICT_DOC)
    def api_note(who: ApiWho, number: Number, body: Note, if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.note(number, who.name, body.text,
                                                       version=guard(body, if_match)))

    @api.post("/work-orders/{number}/replies", summary="Reply to the client (via the outbox; "
              "the first reply stops the response clock)", responses=CONFLICT_DOC)
    def api_reply(who: ApiWho, number: Number, body: Reply, if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.reply(
            number, who.name, body.body, wait_for_client=body.wait_for_client,
            agent_name=who.display_name, version=guard(body, if_match)))

    @api.post("/work-orders/{number}/called-back", summary="Log the call back (stops the "
              "call-back clock)", responses=CONFLICT_DOC)
    def api_called_back(who: ApiWho, number: Number, body: CalledBack,
                        if_match: IfMatch) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.called_back(number, who.name, body.text,
                                                              version=guard(body, if_match)))

    @api.post("/work-orders/{number}/resolve", summary="Resolve", responses=CONFLICT_DOC)
    def api_resolve(who: ApiWho, number: Number, if_match: IfMatch,
                    body: Guarded | None = None) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.resolve(number, who.name,
                                                          version=guard(body, if_match)))

    @api.post("/work-orders/{number}/reopen", summary="Reopen a resolved work order",
              responses=CONFLICT_DOC)
    def api_reopen(who: ApiWho, number: Number, if_match: IfMatch,
                   body: Guarded | None = None) -> dict[str, Any]:
        return api_call(number, lambda: deps.desk.reopen(number, who.name,
                                                         version=guard(body, if_match)))

    ScreenedRoutes(deps, render, principal, api_csrf, check_csrf, clean_html).add(app, api)
    LiveRoutes(deps, api_csrf).add(api)
    app.include_router(api)

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(who: Who) -> JSONResponse:
        return JSONResponse(app.openapi())

    for route in extra_routes or ():
        app.router.routes.append(route)
    return app


# ---- API bodies and JSON shapes -------------------------------------------------------------
class Reclassify(Guarded):
    request_type: str = Field(max_length=64)
    priority: str = Field(max_length=64)


class Assign(Guarded):
    assignee: str | None = Field(default=None, max_length=64,
                                 description="a staff user name; null unassigns")


class Promise(Guarded):
    promised_at: datetime | None = Field(
        default=None, description="ISO 8601 with an offset, within the bounds of "
                                  "triage.desk.actions.PROMISE_WINDOW")


class StatusChange(Guarded):
    status: str = Field(max_length=32, description="new | open | waiting_client | resolved")


class Note(Guarded):
    text: str = Field(max_length=20_000)


class CalledBack(Guarded):
    text: str = Field(default="", max_length=20_000, description="what was said (optional)")


class Reply(Guarded):
    body: str = Field(max_length=50_000)
    wait_for_client: bool = False


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
                           "status": o.status, "text": (o.context or {}).get("body")})
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


def _local_datetime(value: str, tz: str) -> datetime | None:
    """A ``datetime-local`` form value read in the client's zone; empty clears."""
    value = value.strip()
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
        t = t if t.tzinfo else t.replace(tzinfo=ZoneInfo(tz))
        t.astimezone(UTC)  # the last hours of year 9999 overflow here
    except (ValueError, OverflowError):
        raise ActionError(f"not a date and time: {value[:40]!r}") from None
    return t


__all__ = ["LOGIN_CSRF_COOKIE", "SESSION_COOKIE", "WebDeps", "clean_html", "create_web_app",
           "safe_next"]
