"""The staff web app and JSON API, served by the daemon's own event loop (FastAPI on uvicorn)
beside the ops endpoints. This module only assembles it:

- ``triage.web.auth``: login and logout, the caller (``Who``/``ApiWho``), CSRF, the login
  throttle;
- ``triage.web.pages``: the HTML pages and their forms;
- ``triage.web.api``: the JSON API under /api/v1 and its OpenAPI document;
- ``triage.web.screened``: the Screened pages and their API;
- ``triage.web.views``: saved views (the views page, saving the queue's filter) and the
  queue's bulk actions, with their API;
- ``triage.web.compose``: canned replies (pages, API, inserting into the reply form) and the
  gate on a reply's upload size;
- ``triage.web.actions``: the work-order actions, one row each, behind both a form and an
  API route.

Every route takes what it needs from ``app.state`` through ``triage.web.deps`` (``Deps``:
the ``WebDeps``; ``Render``: the page renderer), never from a closure. To add a page: write
a router in its own module (``router = APIRouter(include_in_schema=False)``, routes taking
``who: Who`` and ``deps: Deps``) and include it in ``ROUTERS`` here; an API route goes on an
``APIRouter(prefix="/api/v1")`` and takes ``who: ApiWho``.

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

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.responses import Response
from starlette.routing import BaseRoute

from triage.web import api, auth, compose, merge, pages, screened, views
from triage.web.auth import LOGIN_CSRF_COOKIE, SESSION_COOKIE, LoginRequired, safe_next
from triage.web.deps import Renderer, WebDeps, make_templates
from triage.web.pages import clean_html

CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'; script-src 'self'; connect-src 'self'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "same-origin"}

# In this order: the pages, then the API (the OpenAPI document lists its paths in this order).
ROUTERS: tuple[APIRouter, ...] = (auth.router, pages.router, screened.router, merge.router,
                                  compose.router, views.router, api.router, screened.api,
                                  merge.api, compose.api, views.api, api.docs)


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


def create_web_app(deps: WebDeps, *, extra_routes: list[BaseRoute] | None = None) -> FastAPI:
    """The app for ``deps``; ``extra_routes`` (the ops endpoints) are served beside it."""
    app = FastAPI(title="ITX Triage staff API", version="1",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.deps = deps
    app.state.render = Renderer(deps)
    app.state.scripts = pages.list_scripts(deps.templates_dir)
    app.add_middleware(SecurityHeaders)
    compose.gate_uploads(app, deps, headers=SECURITY_HEADERS)
    auth.throttle_logins(app, deps, headers=SECURITY_HEADERS)  # added last: outermost
    app.add_exception_handler(LoginRequired, auth.login_required)
    app.add_exception_handler(RequestValidationError, pages.invalid_request)
    for router in ROUTERS:
        app.include_router(router)
    for route in extra_routes or ():
        app.router.routes.append(route)
    return app


__all__ = ["LOGIN_CSRF_COOKIE", "SESSION_COOKIE", "WebDeps", "clean_html", "create_web_app",
           "make_templates", "safe_next"]
