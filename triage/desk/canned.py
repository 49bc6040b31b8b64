"""Canned replies: reply templates staff write once and insert into a reply.

A template is Jinja2 text written by staff, so it is treated as untrusted code. Three fences:
- it may use only a small language: text, ``{{ variable }}``, a few string filters and
  ``{% if %}``; no attributes, items, calls, loops, assignments, macros, includes or
  arithmetic (``check_template`` walks the parsed template and refuses anything else, at save
  time and again at render time). Without loops, macros and ``*`` the output is bounded by
  the template's length times the longest variable, so no template can make a huge reply;
- the variables are plain strings made here (``variables``): nothing reachable from them
  leads to the work order, the session or the settings;
- it renders in a ``SandboxedEnvironment`` that also refuses every attribute and call,
  should the first fence ever let one through.

A template error is a ``CannedError`` (an ``ActionError``, so pages and the API answer 4xx
with its text). Creating, changing and deleting a template is audited as an ``Event``
without a work order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from triage.desk.actions import MAX_REPLY, ActionError, NotFound
from triage.parse import clean_header
from triage.sla import SlaPolicy
from triage.storage.models import CannedReply, Client, Event, User, WorkOrder

MAX_NAME = 120
MAX_BODY = 20_000
TIME_FORMAT = "%a %d %b %Y %H:%M %Z"
VARIABLES = {
    "client_name": "the requester's name (their address when the mail gave no name)",
    "company": "the client organisation's name",
    "number": "the work-order number, e.g. ITX-000123",
    "subject": "the work order's subject",
    "request_type": "the request type in words, e.g. password reset",
    "priority": "urgent, high or normal",
    "response_due": "when the email response is due, in the client's time zone",
    "callback_due": "when the call back is due (empty when the type has none)",
    "fulfil_due": "when the request is due to be fulfilled (empty when none)",
    "timezone": "the client's time zone, e.g. America/New_York",
    "agent": "the name of the staff member replying",
}
FILTERS = frozenset({"upper", "lower", "title", "capitalize", "trim", "default", "d",
                     "truncate", "length", "first", "last"})
TESTS = frozenset({"defined", "undefined", "none"})
_NODES = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Const,
          nodes.Filter, nodes.Test, nodes.If, nodes.CondExpr, nodes.Compare, nodes.Operand,
          nodes.And, nodes.Or, nodes.Not, nodes.Concat, nodes.Keyword)


class CannedError(ActionError):
    """The template cannot be saved or rendered; the message says where and why."""


class _Closed(SandboxedEnvironment):
    """A sandbox in which nothing has attributes and nothing is callable."""

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        return False

    def is_safe_callable(self, obj: Any) -> bool:
        return False


def _environment() -> _Closed:
    env = _Closed(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
    env.globals.clear()  # no range, dict, lipsum, cycler, joiner, namespace
    env.filters = {k: v for k, v in env.filters.items() if k in FILTERS}
    env.tests = {k: v for k, v in env.tests.items() if k in TESTS}
    return env


_ENV = _environment()


def check_template(body: str) -> nodes.Template:
    """The parsed template, if it is within the allowed language (module docstring)."""
    if len(body) > MAX_BODY:
        raise CannedError(f"a canned reply is at most {MAX_BODY} characters")
    try:
        tree = _ENV.parse(body)
    except TemplateSyntaxError as e:
        raise CannedError(f"template error on line {e.lineno}: {e.message}") from None
    for node in tree.find_all(nodes.Node):
        line = getattr(node, "lineno", "?")
        if not isinstance(node, _NODES):
            raise CannedError(f"template error on line {line}: {_what(node)} is not allowed "
                              "in a canned reply (only variables, filters and if)")
        if isinstance(node, nodes.Name) and (node.ctx != "load" or node.name not in VARIABLES):
            raise CannedError(f"template error on line {line}: unknown variable "
                              f"{node.name!r}; the variables are {', '.join(VARIABLES)}")
        if isinstance(node, nodes.Filter) and node.name not in FILTERS:
            raise CannedError(f"template error on line {line}: filter {node.name!r} is not "
                              f"allowed; the filters are {', '.join(sorted(FILTERS))}")
        if isinstance(node, nodes.Test) and node.name not in TESTS:
            raise CannedError(f"template error on line {line}: test {node.name!r} is not "
                              f"allowed; the tests are {', '.join(sorted(TESTS))}")
    return tree


def _what(node: nodes.Node) -> str:
    return {"Getattr": "an attribute", "Getitem": "an item", "Call": "a call",
            "For": "a loop", "Assign": "an assignment", "AssignBlock": "an assignment",
            "Macro": "a macro", "CallBlock": "a call block", "Include": "an include",
            "Import": "an import", "FromImport": "an import", "Extends": "extends",
            "Block": "a block", "List": "a list", "Tuple": "a tuple", "Dict": "a dict",
            }.get(type(node).__name__, "arithmetic" if isinstance(node, (nodes.BinExpr,
                  nodes.UnaryExpr)) else type(node).__name__.lower())


def render_template(body: str, values: dict[str, str]) -> str:
    """``body`` rendered over ``values`` (``variables``); CannedError if it cannot be."""
    check_template(body)
    try:
        text = _ENV.from_string(body).render(**values)
    except TemplateError as e:  # SecurityError and UndefinedError included
        raise CannedError(f"template error: {e.message or type(e).__name__}") from None
    except (TypeError, ValueError, ArithmeticError) as e:  # a filter given a bad argument
        raise CannedError(f"template error: {e}") from None
    if len(text) > MAX_REPLY:
        raise CannedError(f"the rendered reply is longer than {MAX_REPLY} characters")
    return text


def variables(policy: SlaPolicy, wo: WorkOrder, company: str, agent: str) -> dict[str, str]:
    """What a template may use, as plain strings, times in the client's calendar zone."""
    tz = policy.calendar(wo.contract).tz if wo.contract in policy.calendars else ZoneInfo("UTC")

    def local(t: datetime | None) -> str:
        if t is None:
            return ""
        try:
            return t.astimezone(tz).strftime(TIME_FORMAT)
        except (OverflowError, ValueError):
            return t.astimezone(UTC).isoformat()

    return {
        "client_name": clean_header(wo.requester_name or wo.requester or "", 200),
        "company": clean_header(company, 200),
        "number": str(wo.number or ""),
        "subject": clean_header(wo.subject or "", 200),
        "request_type": wo.request_type.replace("_", " "),
        "priority": wo.priority,
        "response_due": local(wo.response_due),
        "callback_due": local(wo.callback_due),
        "fulfil_due": local(wo.fulfil_due),
        "timezone": tz.key,
        "agent": clean_header(agent, 200),
    }


@dataclass(frozen=True)
class Canned:
    """A template as pages and the API show it; ``suggested``: tagged with the type asked."""

    id: int
    name: str
    body: str
    request_types: tuple[str, ...]
    updated_by: str
    updated_at: datetime
    suggested: bool = False


def _view(row: CannedReply, request_type: str | None = None) -> Canned:
    types = tuple(str(t) for t in row.request_types or ())
    return Canned(row.id, row.name, row.body, types, row.updated_by, row.updated_at,
                  request_type is not None and request_type in types)


def listing(s: Session, request_type: str | None = None) -> list[Canned]:
    """Every template; those tagged with ``request_type`` first, then by name."""
    rows = [_view(r, request_type) for r in
            s.scalars(select(CannedReply).order_by(CannedReply.name, CannedReply.id))]
    return sorted(rows, key=lambda c: not c.suggested)  # stable: names stay in order


class CannedReplies:
    """Staff-managed templates: list, save, delete, render for a work order."""

    def __init__(self, sessions: sessionmaker[Session], policy: SlaPolicy,
                 clock: Callable[[], datetime]) -> None:
        self._sessions = sessions
        self._policy = policy
        self._clock = clock

    def listing(self, s: Session, request_type: str | None = None) -> list[Canned]:
        return listing(s, request_type)

    def get(self, s: Session, canned_id: int) -> Canned:
        row = s.get(CannedReply, canned_id)
        if row is None:
            raise NotFound(f"canned reply {canned_id}")
        return _view(row)

    def _checked(self, name: str, body: str, request_types: Iterable[str]
                 ) -> tuple[str, str, list[str]]:
        name = " ".join(name.split())
        if not name:
            raise CannedError("a canned reply needs a name")
        if len(name) > MAX_NAME:
            raise CannedError(f"a name is at most {MAX_NAME} characters")
        body = body.replace("\r\n", "\n").strip("\n")
        if not body.strip():
            raise CannedError("an empty canned reply")
        check_template(body)
        types: list[str] = []
        for t in request_types:
            if t not in self._policy.types:
                raise CannedError(f"unknown request type {t[:64]!r}")
            if t not in types:
                types.append(t)
        return name, body, types

    def create(self, actor: str, name: str, body: str, request_types: Iterable[str] = ()
               ) -> Canned:
        name, body, types = self._checked(name, body, request_types)
        now = self._clock()
        try:
            with self._sessions.begin() as s:
                row = CannedReply(name=name, body=body, request_types=types, created_by=actor,
                                  updated_by=actor, created_at=now, updated_at=now)
                s.add(row)
                s.flush()
                s.add(Event(work_order_id=None, actor=actor, action="canned_created",
                            detail={"canned_id": row.id, "name": name}, at=now))
                return _view(row)
        except IntegrityError:
            raise CannedError(f"a canned reply named {name!r} exists already") from None

    def update(self, canned_id: int, actor: str, name: str, body: str,
               request_types: Iterable[str] = ()) -> Canned:
        name, body, types = self._checked(name, body, request_types)
        now = self._clock()
        try:
            with self._sessions.begin() as s:
                row = s.get(CannedReply, canned_id, with_for_update=True)
                if row is None:
                    raise NotFound(f"canned reply {canned_id}")
                was = row.name
                row.name, row.body, row.request_types = name, body, types
                row.updated_by, row.updated_at = actor, now
                s.add(Event(work_order_id=None, actor=actor, action="canned_changed",
                            detail={"canned_id": row.id, "name": name, "was": was}, at=now))
                s.flush()
                return _view(row)
        except IntegrityError:
            raise CannedError(f"a canned reply named {name!r} exists already") from None

    def delete(self, canned_id: int, actor: str) -> None:
        now = self._clock()
        with self._sessions.begin() as s:
            row = s.get(CannedReply, canned_id, with_for_update=True)
            if row is None:
                raise NotFound(f"canned reply {canned_id}")
            s.add(Event(work_order_id=None, actor=actor, action="canned_deleted",
                        detail={"canned_id": row.id, "name": row.name}, at=now))
            s.delete(row)

    def render(self, s: Session, canned_id: int, number: str, agent: str) -> str:
        """Template ``canned_id`` filled in for work order ``number``, signed by ``agent``
        (the staff member's display name, else their user name)."""
        row = s.get(CannedReply, canned_id)
        if row is None:
            raise NotFound(f"canned reply {canned_id}")
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
        if wo is None:
            raise NotFound(number)
        company = s.scalar(select(Client.name).where(Client.id == wo.client_id)) or ""
        return render_template(row.body, variables(self._policy, wo, company, agent))


def agent_name(s: Session, user_name: str) -> str:
    """How a reply is signed: the staff member's display name, else their user name."""
    shown = s.scalar(select(User.display_name).where(User.name == user_name))
    return shown or user_name


__all__ = ["FILTERS", "MAX_BODY", "MAX_NAME", "TESTS", "VARIABLES", "Canned", "CannedError",
           "CannedReplies", "agent_name", "check_template", "listing", "render_template",
           "variables"]
