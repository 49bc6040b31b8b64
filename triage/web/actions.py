"""The work-order actions, one row each in ``ACTIONS``: the page's form route
(``triage.web.pages``) and the JSON API route (``triage.web.api``) are both built from it.

To add an action: a ``Desk`` method, then one row here (a form model, an API body, the desk
call, the done key, which must also be in ``triage.web.alerts.DONE``). A form posts its
fields plus ``csrf_token`` and ``version``; where the form's fields are the API's, the form
model is the body model with ``ActionForm`` mixed in and the same call serves both.

The reply is the row that uses every option: its form posts files (stored before the call,
within ``WebDeps.upload_limits``; the API's JSON body has none) and a status to set with the
reply (``then``), which picks the done key.
"""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import UploadFile
from pydantic import BaseModel, Field

from triage.desk.actions import ActionError, Desk
from triage.desk.uploads import StoredFile, Upload, UploadLimits, UploadRefused, store
from triage.web.auth import Principal
from triage.web.deps import ID_MAX, WebDeps


class ActionForm(BaseModel):
    """What every action's form posts besides its own fields."""

    csrf_token: str = Field(max_length=200)
    # The work order's version the form's page showed (the collision guard); absent: no guard.
    version: int | None = Field(default=None, ge=1, le=ID_MAX)


# ---- API bodies (and, with ActionForm, the forms that post the same fields) ---------------
class Reclassify(BaseModel):
    request_type: str = Field(max_length=64)
    priority: str = Field(max_length=64)


class Assign(BaseModel):
    assignee: str | None = Field(default=None, max_length=64,
                                 description="a staff user name; null unassigns")


class Promise(BaseModel):
    promised_at: datetime | None = Field(
        default=None, description="ISO 8601 with an offset, within the bounds of "
                                  "triage.desk.actions.PROMISE_WINDOW")


class StatusChange(BaseModel):
    status: str = Field(max_length=32, description="new | open | waiting_client | resolved")


class Note(BaseModel):
    text: str = Field(max_length=20_000)


class CalledBack(BaseModel):
    text: str = Field(default="", max_length=20_000, description="what was said (optional)")


class Reply(BaseModel):
    body: str = Field(max_length=50_000)
    wait_for_client: bool = False
    then: str | None = Field(default=None, max_length=32,
                             description="waiting_client | resolved: set with the reply")


class ReclassifyForm(ActionForm, Reclassify):
    pass


class AssignForm(ActionForm, Assign):
    pass


class StatusForm(ActionForm):
    status: str = Field(max_length=64)


class NoteForm(ActionForm, Note):
    pass


class CalledBackForm(ActionForm, CalledBack):
    pass


class PromiseForm(ActionForm):
    promised: str = Field(default="", max_length=64,
                          description="a datetime-local value in the work order's zone")


class ReplyForm(ActionForm):
    body: str = Field(max_length=50_000)
    then: str = Field(default="", max_length=32,
                      description="the button: waiting_client | resolved; empty: none")
    wait: str = Field(default="", max_length=8, description="a checkbox: set means wait")
    # An empty file input sends one nameless empty part (skipped by ``read_uploads``).
    files: list[UploadFile] = Field(default_factory=list)


def local_datetime(value: str, tz: str) -> datetime | None:
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


@dataclass(frozen=True)
class FormContext:
    """What turning a form into the call's body may use."""

    deps: WebDeps
    zone: Callable[[], str]  # the work order's time zone (a query: asked only if needed)


@dataclass(frozen=True)
class PageReply:
    """A reply from the page: the API's fields, and its files already stored."""

    reply: Reply
    files: list[StoredFile]


REPLY_DONE = {"waiting_client": "reply queued, waiting on client",
              "resolved": "reply queued and resolved"}


def reply_from_form(f: ReplyForm, ctx: FormContext) -> PageReply:
    """Stores the files first (``Desk.reply`` only adds their rows); over the limits:
    ``UploadRefused``, nothing stored."""
    limits = ctx.deps.upload_limits
    stored = store(read_uploads(f.files, limits), ctx.deps.attachments_dir, limits)
    then = f.then or ("waiting_client" if f.wait else "")
    return PageReply(Reply(body=f.body, then=then or None), stored)


def reply_drafts(f: ReplyForm) -> dict[str, str]:
    """The text, and the files' names to choose again (a browser cannot refill a file
    input)."""
    names = ", ".join(u.filename for u in f.files if u.filename)
    return {"reply": f.body, "files": names[:500]}


def reply(desk: Desk, number: str, who: Principal, b: Reply | PageReply,
          version: int | None) -> object:
    r, files = (b.reply, b.files) if isinstance(b, PageReply) else (b, [])
    return desk.reply(number, who.name, r.body, wait_for_client=r.wait_for_client,
                      then=r.then, files=files, agent_name=who.display_name, version=version)


def kept(key: str, field: str) -> Callable[[Any], dict[str, str]]:
    """Drafts: the form's ``field`` given back to the page as ``drafts[key]``."""
    return lambda form: {key: getattr(form, field)}


# The desk call: (desk, work order number, caller, API body or form, version) -> anything.
Call = Callable[[Desk, str, Principal, Any, int | None], object]
# A form's fields as the call's body (the API's, or what only a form sends, like files).
FromForm = Callable[[Any, FormContext], Any]


def _same(form: Any, ctx: FormContext) -> Any:
    return form


@dataclass(frozen=True)
class Action:
    name: str  # the form posts to /work-orders/{number}/<name>
    api_name: str  # the API: POST /api/v1/work-orders/{number}/<api_name>
    done: str  # the key the form's redirect carries (triage.web.alerts.DONE)
    summary: str  # the API route's summary in the OpenAPI document
    form: type[ActionForm]
    body: type[BaseModel] | None  # the API's JSON body; None: none
    call: Call
    from_form: FromForm = _same
    # What was typed, given back to the page when the action is refused (form -> drafts).
    drafts: Callable[[Any], dict[str, str]] | None = None
    # A done key that depends on the body (a reply that also sets a status): one of ``done``
    # and ``more_done``.
    done_of: Callable[[Any], str] | None = None
    more_done: tuple[str, ...] = ()


ACTIONS: tuple[Action, ...] = (
    Action("reclassify", "reclassify", "reclassified",
           "Set type and priority (recomputes the due dates; kept as training data)",
           ReclassifyForm, Reclassify,
           lambda desk, n, who, b, v: desk.reclassify(n, who.name, b.request_type, b.priority,
                                                      version=v)),
    Action("assign", "assign", "assigned", "Assign (null: unassign)", AssignForm, Assign,
           lambda desk, n, who, b, v: desk.assign(n, who.name, b.assignee or None, version=v)),
    Action("promise", "promise", "promise set", "Set or clear the promised date",
           PromiseForm, Promise,
           lambda desk, n, who, b, v: desk.promise(n, who.name, b.promised_at, version=v),
           from_form=lambda f, ctx: Promise(promised_at=local_datetime(f.promised,
                                                                       ctx.zone()))),
    Action("status", "status", "status changed",
           "Change status (waiting_client pauses the SLA clocks)", StatusForm, StatusChange,
           lambda desk, n, who, b, v: desk.set_status(n, who.name, b.status, version=v)),
    Action("note", "notes", "note added", "Add an internal note", NoteForm, Note,
           lambda desk, n, who, b, v: desk.note(n, who.name, b.text, version=v),
           drafts=kept("note", "text")),
    Action("reply", "replies", "reply queued",
           "Reply to the client (via the outbox; the first reply stops the response clock)",
           ReplyForm, Reply, reply, from_form=reply_from_form, drafts=reply_drafts,
           done_of=lambda b: REPLY_DONE.get(b.reply.then or "", "reply queued"),
           more_done=tuple(REPLY_DONE.values())),
    Action("called-back", "called-back", "call back logged",
           "Log the call back (stops the call-back clock)", CalledBackForm, CalledBack,
           lambda desk, n, who, b, v: desk.called_back(n, who.name, b.text, version=v),
           drafts=kept("call", "text")),
    Action("resolve", "resolve", "resolved", "Resolve", ActionForm, None,
           lambda desk, n, who, b, v: desk.resolve(n, who.name, version=v)),
    Action("reopen", "reopen", "reopened", "Reopen a resolved work order", ActionForm, None,
           lambda desk, n, who, b, v: desk.reopen(n, who.name, version=v)),
)

__all__ = ["ACTIONS", "REPLY_DONE", "Action", "ActionForm", "Assign", "CalledBack", "FormContext",
           "Note", "PageReply", "Promise", "Reclassify", "Reply", "StatusChange", "kept",
           "local_datetime", "read_uploads"]
