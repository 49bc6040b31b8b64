"""Who is calling: login and logout, the session or API token behind a request
(``Who``, ``ApiWho``), the CSRF checks, and the login throttle's wiring.

A route that needs a signed-in caller takes ``who: Who``; an API route takes ``who: ApiWho``,
which also checks the ``X-CSRF-Token`` header of a cookie-authenticated call that changes
state. A form route calls ``check_csrf(who, csrf_token)`` itself.
"""

import asyncio
import hmac
import logging
import math
import os
import re
import secrets
import sys
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, cast
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from triage import security
from triage.desk import logins, users
from triage.web.alerts import LOGIN_ALERTS
from triage.web.deps import Csrf, Deps, Render, Renderer, WebDeps
from triage.web.throttle import LoginBuckets, LoginThrottleMiddleware

SESSION_COOKIE = "itx_session"
LOGIN_CSRF_COOKIE = "itx_login_csrf"
SAFE_NEXT = re.compile(r"^/(?![/\\])[^\s\\]*$")

router = APIRouter(include_in_schema=False)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Principal:
    user_id: int
    name: str
    display_name: str
    csrf: str | None  # None for API-token callers (no ambient credential, no CSRF)


class LoginRequired(Exception):
    pass


def safe_next(target: str | None) -> str:
    """A local path to go to after login; anything else (other hosts, schemes) is /queue."""
    if target and SAFE_NEXT.match(target) and len(target) < 2000:
        return target
    return "/queue"


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def principal(request: Request, deps: Deps) -> Principal:
    """The signed-in caller: a session cookie, or under /api an API token."""
    now = deps.clock()
    token = request.cookies.get(SESSION_COOKIE, "")
    with deps.reads() as s:
        row = users.session_for(s, token, now) if token else None
        if row is not None:
            return Principal(row.user.id, row.user.name, row.user.display_name, row.csrf_token)
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


def api_principal(request: Request, who: Who) -> Principal:
    """The caller of an API route; a state-changing call with a session cookie must send
    the session's CSRF token as ``X-CSRF-Token`` (a bearer token is not ambient)."""
    if request.method not in ("GET", "HEAD"):
        check_csrf(who, request.headers.get("x-csrf-token"))
    return who


ApiWho = Annotated[Principal, Depends(api_principal)]


async def login_required(request: Request, exc: Exception) -> Response:
    """The answer to ``LoginRequired``: 401 under /api, else the login page."""
    if request.url.path.startswith("/api/"):
        return JSONResponse({"detail": "login required"}, status_code=401,
                            headers={"WWW-Authenticate": "Bearer"})
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse("/login?" + urlencode({"next": target}), status_code=303)


def throttle_logins(app: FastAPI, deps: WebDeps, *, headers: Mapping[str, str]) -> None:
    """Put the login throttle in front of ``app`` (outermost when added last: a throttled
    login is answered before routing and form parsing), with its buckets and the argon2
    thread on ``app.state`` for ``POST /login``."""
    buckets = deps.login_buckets or LoginBuckets()
    app.add_middleware(LoginThrottleMiddleware, buckets=buckets, metrics=deps.metrics,
                       headers=dict(headers))
    app.state.login_buckets = buckets
    # argon2 gets one thread of its own, so checks run one at a time and a login flood
    # queues here, not in the thread pool the pages use. A check still spreads over argon2's
    # lanes (threads it starts, four in our hashes) and holds no GIL, so the thread and its
    # lanes run at a lower priority (argon2_nice): when the CPU is short, pages get it first.
    app.state.argon2 = ThreadPoolExecutor(max_workers=1, thread_name_prefix="argon2",
                                          initializer=lower_priority,
                                          initargs=(buckets.limits.argon2_nice,))


def lower_priority(nice: int) -> None:
    """Make the calling thread ``nice`` steps nicer (at most 19). On Linux a thread has a
    nice value of its own, and the threads it starts (argon2's lanes) inherit it; elsewhere
    the value is per process, so nothing is changed there."""
    if not nice or sys.platform != "linux":
        return
    thread = threading.get_native_id()
    try:
        os.setpriority(os.PRIO_PROCESS, thread,
                       min(19, os.getpriority(os.PRIO_PROCESS, thread) + nice))
    except OSError as e:  # a sandbox that forbids it: checks run at the usual priority
        log.warning("argon2 thread priority unchanged: %s", e)


def login_page(deps: WebDeps, render: Renderer, next_: str, alert: str = "",
               status: int = 200, retry_after: float = 0) -> Response:
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


def _refused(deps: WebDeps, reason: str) -> None:
    if deps.metrics is not None:
        deps.metrics.observe_login_failure(reason)


def _begin_login(deps: WebDeps, name: str, client: str, now: datetime,
                 delay: logins.Delay) -> tuple[logins.Attempt, users.Credentials]:
    with deps.sessions.begin() as s:  # short: counts the attempt, then commits
        attempt = logins.reserve(s, name, client, now, delay)
    with deps.reads() as s:
        return attempt, users.credentials_for(s, name)


def _finish_login(deps: WebDeps, creds: users.Credentials, name: str, client: str,
                  now: datetime, new_hash: str | None, old_session: str | None) -> str | None:
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


@router.get("/login")
def login_form(deps: Deps, render: Render,
               next: Annotated[str, Query(max_length=2000)] = "/queue") -> Response:
    return login_page(deps, render, next)


@router.post("/login")
async def login(request: Request, deps: Deps, render: Render,
                name: Annotated[str, Form(max_length=64)],
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
        return login_page(deps, render, next, "expired")
    now = deps.clock()
    buckets = cast(LoginBuckets, request.app.state.login_buckets)
    attempt, creds = await run_in_threadpool(_begin_login, deps, typed, client, now,
                                             buckets.limits.delay)
    if not attempt.allowed:
        delay = attempt.retry_after.total_seconds()
        _refused(deps, "delayed")
        security.event("login_delayed", level=logging.WARNING, user=typed, client=client,
                       retry_after=round(delay, 1))
        return login_page(deps, render, next, "delayed", 429, retry_after=delay)
    if attempt.delay_started:
        security.event("login_delay_started", level=logging.WARNING, user=typed,
                       client=client)
    loop = asyncio.get_running_loop()
    argon2 = cast(ThreadPoolExecutor, request.app.state.argon2)
    ok = await loop.run_in_executor(argon2, users.verify_password, creds.password_hash,
                                    password)
    token = None
    if ok and creds.user_id is not None:
        new_hash = await loop.run_in_executor(argon2, users.rehash_if_needed,
                                              creds.password_hash, password)
        token = await run_in_threadpool(_finish_login, deps, creds, typed, client, now,
                                        new_hash, request.cookies.get(SESSION_COOKIE))
    if token is None:
        _refused(deps, "credentials")
        security.event("login_failed", level=logging.WARNING, user=typed, client=client)
        return login_page(deps, render, next, "credentials", 401)
    security.event("login", user=typed, client=client)
    buckets.known_good(client)
    resp = RedirectResponse(safe_next(next), status_code=303)
    resp.set_cookie(SESSION_COOKIE, token, httponly=True, samesite="lax",
                    secure=deps.cookie_secure, max_age=int(deps.session_ttl.total_seconds()),
                    path="/")
    resp.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return resp


@router.post("/logout")
def logout(request: Request, deps: Deps, who: Who, csrf_token: Csrf = "") -> Response:
    check_csrf(who, csrf_token)
    with deps.sessions.begin() as s:
        users.end_session(s, request.cookies.get(SESSION_COOKIE, ""))
    security.event("logout", user=who.name, client=client_of(request))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


__all__ = ["LOGIN_CSRF_COOKIE", "SESSION_COOKIE", "ApiWho", "LoginRequired", "Principal", "Who",
           "api_principal", "check_csrf", "login_required", "lower_priority", "principal",
           "router", "safe_next", "throttle_logins"]
