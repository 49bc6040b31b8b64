"""What every route of the staff web app takes from ``app.state``: the daemon's dependencies
(``WebDeps``) and the page renderer, as FastAPI dependencies, plus the path and form
parameters several modules share.

``triage.web.app.create_web_app`` puts a ``WebDeps`` on ``app.state.deps`` and a ``Renderer``
on ``app.state.render``; a route asks for them with the ``Deps`` and ``Render`` annotations.
This module imports no route module, so every route module can import it.
"""

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, cast
from zoneinfo import ZoneInfo

from fastapi import Depends, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from sqlalchemy.orm import Session, sessionmaker

from triage.desk import users
from triage.desk.actions import STATUS_LABELS, Desk
from triage.desk.queue import format_remaining
from triage.desk.screened import Screening, awaiting_count
from triage.desk.sent import SentAcks
from triage.desk.uploads import UploadLimits
from triage.desk.views import View, navigation
from triage.metrics import Metrics
from triage.resources import TEMPLATES_DIR
from triage.sla import SlaPolicy
from triage.web.alerts import bidi
from triage.web.throttle import LoginBuckets

# Work order numbers as the store makes them (ITX- and at least six digits).
NUMBER_PATTERN = r"^ITX-\d{6,12}$"
ID_MAX = 2**31 - 1  # database ids are 32-bit on PostgreSQL
Number = Annotated[str, PathParam(pattern=NUMBER_PATTERN, description="e.g. ITX-000123")]
RowId = Annotated[int, PathParam(ge=1, le=ID_MAX)]
Short = Annotated[str, Form(max_length=64)]
Csrf = Annotated[str, Form(max_length=200)]


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
    upload_limits: UploadLimits = field(default_factory=UploadLimits)  # files on a reply


def make_templates(templates_dir: Path = TEMPLATES_DIR) -> Environment:
    env = Environment(loader=FileSystemLoader(templates_dir), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["remaining"] = format_remaining
    env.filters["label"] = lambda v: str(v).replace("_", " ")
    env.filters["bidi"] = bidi
    env.globals["STATUS_LABELS"] = STATUS_LABELS
    return env


def local_time(t: datetime | None, tz: str) -> str:
    if t is None:
        return "—"
    try:
        return t.astimezone(ZoneInfo(tz)).strftime("%a %d %b %Y %H:%M %Z")
    except (OverflowError, ValueError):  # a time at the edge of the calendar: show it as is
        return t.isoformat()


class Renderer:
    """Renders ``templates/web/<name>.html.j2`` into a response."""

    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.templates = make_templates(deps.templates_dir)
        self.templates.filters["local"] = local_time
        self.templates.globals["tz_of"] = self.tz_of_contract

    def tz_of_contract(self, contract: str) -> str:
        policy = self.deps.policy
        return policy.calendar(contract).tz.key if contract in policy.calendars else "UTC"

    def __call__(self, name: str, status: int = 200, *, session: Session | None = None,
                 **ctx: Any) -> HTMLResponse:
        """``session``: the caller's open read session, if any. A second one per request
        would let concurrent requests each hold one pooled connection while waiting for
        another, until the pool's timeout (20 concurrent queue requests did)."""
        deps = self.deps
        if ctx.get("who"):  # the navigation's counts: screened mail awaiting, the views
            with nullcontext(session) if session is not None else deps.reads() as s:
                ctx["screened_awaiting"] = awaiting_count(s, deps.clock())
                ctx["nav_views"] = nav_views(s, ctx["who"], deps)
        html = self.templates.get_template(f"web/{name}.html.j2").render(**ctx)
        return HTMLResponse(html, status_code=status)


def nav_views(s: Session, who: Any, deps: WebDeps) -> list[View]:
    """The signed-in user's views, counted, for the navigation of every page (``who``: a
    ``triage.web.auth.Principal``, which imports this module)."""
    return navigation(s, who.user_id, who.name, deps.policy, deps.clock())


# Async: a lookup on app.state needs no thread from the pool the sync routes run on.
async def deps_of(request: Request) -> WebDeps:
    return cast(WebDeps, request.app.state.deps)


async def render_of(request: Request) -> Renderer:
    return cast(Renderer, request.app.state.render)


Deps = Annotated[WebDeps, Depends(deps_of)]
Render = Annotated[Renderer, Depends(render_of)]

__all__ = ["ID_MAX", "NUMBER_PATTERN", "Csrf", "Deps", "Number", "Render", "Renderer", "RowId",
           "Short", "WebDeps", "deps_of", "make_templates", "nav_views", "render_of"]
