"""What staff do to a work order. Every action runs in one transaction, re-reads the row
under a write lock, records an audit ``Event`` (who, what, when) and refreshes the SLA marks
the queue sorts on, so the page, the API and the SLA watch never disagree.

A reply is an outbox row like an acknowledgment: it is sent (and retried) by the daemon's
outbox sweep, threaded on the client's last message, and the first one stops the email
response clock (``first_response_at``). A change of type or priority recomputes the due
dates from the original arrival time and is kept as a ``Correction`` for the nightly retrain.

The collision guard: each action's events raise the work order's ``version`` (once per
action), and an action given the version its page showed is refused with ``Conflict`` when
the work order has moved on since, under the same row lock the action takes, so two
technicians acting on the same page cannot both succeed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from triage import notify
from triage.outbox.enqueue import Mail, enqueue, sender_domain
from triage.parse import clean_header
from triage.sla import SlaPolicy
from triage.slamarks import apply_marks, contract_calendar, end_pause, pauses_of, start_pause
from triage.storage.models import AttachmentRow, Correction, Event, Message, User, WorkOrder
from triage.store.model import next_version

if TYPE_CHECKING:
    from triage.desk.uploads import StoredFile

STATUSES = ("new", "open", "waiting_client", "resolved")
STATUS_LABELS = {"new": "New", "open": "Open", "waiting_client": "Waiting on client",
                 "resolved": "Resolved"}
# What a reply may set in the same action ("Send and mark waiting on client", "Send and
# resolve"); without one, a reply opens a new or resolved work order.
REPLY_THEN = ("waiting_client", "resolved")
MAX_NOTE = 20_000
# A promise date within a year back and five years ahead: enough for any real promise, and a
# bound that keeps 0001-01-01 or 9999-12-31 (which no time zone can show) out of the table.
PROMISE_WINDOW = (timedelta(days=366), timedelta(days=5 * 366))
MAX_REPLY = 50_000


class NotFound(LookupError):
    pass


class ActionError(ValueError):
    """The action cannot be done as asked; the message is for the person who asked."""


@dataclass(frozen=True)
class Change:
    """One audit event a page did not show."""

    at: datetime
    actor: str
    action: str
    detail: dict[str, Any]
    version: int


class Conflict(ActionError):
    """The work order changed after the page that sent the action was made; nothing was
    done. ``changes`` are the audit events since the page's version, oldest first."""

    def __init__(self, number: str, seen: int, current: int, changes: list[Change]) -> None:
        self.number, self.seen, self.current, self.changes = number, seen, current, changes
        what = ", ".join(f"{c.actor} {c.action.replace('_', ' ')}" for c in changes[-5:])
        super().__init__(f"{number} changed since this page was loaded ({what or 'updated'}); "
                         "nothing was done: read the changes and try again")


@dataclass(frozen=True)
class DeskConfig:
    from_address: str
    at_risk_fraction: float = 0.75


class Desk:
    def __init__(self, sessions: sessionmaker[Session], policy: SlaPolicy, config: DeskConfig,
                 clock: Callable[[], datetime], *,
                 on_first_response: Callable[[float], None] | None = None) -> None:
        """``on_first_response`` gets the business hours from arrival to the first reply
        (pauses excluded), e.g. ``Metrics.observe_first_response``."""
        self._on_first_response = on_first_response
        self._sessions = sessions
        self._policy = policy
        self._cfg = config
        self._clock = clock
        self._domain = sender_domain(config.from_address)

    # ---- plumbing -----------------------------------------------------------------------
    def _locked(self, s: Session, number: str, version: int | None = None) -> WorkOrder:
        """The work order under a write lock; ``version``: the one the caller's page showed
        (None: no guard, as for API scripts that do not send one)."""
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number).with_for_update())
        if wo is None:
            raise NotFound(number)
        if wo.merged_into_id is not None:
            into = s.scalar(select(WorkOrder.number).where(WorkOrder.id == wo.merged_into_id))
            raise ActionError(f"{number} was merged into {into}; act on that work order")
        if version is not None and wo.version != version:
            raise Conflict(number, version, wo.version, changes_since(s, wo.id, version))
        return wo

    def _event(self, s: Session, wo: WorkOrder, actor: str, action: str,
               detail: dict[str, Any], now: datetime) -> None:
        bumped: dict[int, int] = s.info.setdefault("bumped_versions", {})
        if wo.id not in bumped:  # one version per action, however many events it writes
            wo.version = bumped[wo.id] = next_version(wo.version)
        s.add(Event(work_order_id=wo.id, actor=actor, action=action, detail=detail, at=now,
                    wo_version=bumped[wo.id]))
        wo.updated_at = now

    def _marks(self, wo: WorkOrder) -> None:
        apply_marks(wo, self._policy, self._cfg.at_risk_fraction)

    # ---- actions --------------------------------------------------------------------------
    def reclassify(self, number: str, actor: str, request_type: str, priority: str, *,
                   version: int | None = None) -> WorkOrder:
        if request_type not in self._policy.types:
            raise ActionError(f"unknown request type {request_type!r}")
        if priority not in self._policy.priorities:
            raise ActionError(f"unknown priority {priority!r}")
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            old_type, old_priority = wo.request_type, wo.priority
            changed = (old_type, old_priority) != (request_type, priority)
            if changed:
                due = self._policy.due(request_type, priority, wo.contract, wo.received_at)
                wo.request_type, wo.priority = request_type, priority
                wo.clock_start, wo.response_due = due.clock_start, due.response_due
                wo.callback_due, wo.fulfil_due = due.callback_due, due.fulfil_due
                wo.milestones = [{"name": n, "due": t.isoformat()} for n, t in due.milestones]
                s.add(Correction(work_order_id=wo.id, actor=actor, old_type=old_type,
                                 new_type=request_type, old_priority=old_priority,
                                 new_priority=priority, at=now))
            wo.needs_review, wo.review_reason = False, None
            self._marks(wo)
            self._event(s, wo, actor, "reclassified" if changed else "confirmed",
                        {"type": request_type, "priority": priority,
                         "was_type": old_type, "was_priority": old_priority}, now)
        return wo

    def assign(self, number: str, actor: str, assignee: str | None, *,
               version: int | None = None) -> WorkOrder:
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            user = None
            if assignee:
                user = s.scalar(select(User).where(User.name == assignee, User.active))
                if user is None:
                    raise ActionError(f"no active staff user {assignee!r}")
            was = wo.assignee_id
            wo.assignee_id = user.id if user else None
            self._event(s, wo, actor, "assigned", {"to": user.name if user else None}, now)
            if user is not None and user.id != was and user.name != actor and user.email:
                # Told by mail, through the outbox: it commits with the assignment or not
                # at all, once per assignment (triage.notify).
                enqueue(s.connection(), [notify.assigned(
                    wo, wo.client.name, user.email, _who(s, actor), wo.version, now)],
                    domain=self._domain, now=now)
        return wo

    def promise(self, number: str, actor: str, when: datetime | None, *,
                version: int | None = None) -> WorkOrder:
        if when is not None and when.tzinfo is None:
            raise ActionError("a promise date needs a time zone")
        now = self._clock()
        if when is not None:
            earliest, latest = now - PROMISE_WINDOW[0], now + PROMISE_WINDOW[1]
            try:
                inside = earliest <= when <= latest
            except OverflowError:  # an offset that pushes the time past year 1 or 9999
                inside = False
            if not inside:
                raise ActionError(f"a promise date must be between {earliest:%Y-%m-%d} and "
                                  f"{latest:%Y-%m-%d}")
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            wo.promised_at = when.astimezone(UTC) if when else None
            self._event(s, wo, actor, "promised",
                        {"at": wo.promised_at.isoformat() if wo.promised_at else None}, now)
        return wo

    def set_status(self, number: str, actor: str, status: str, *,
                   version: int | None = None) -> WorkOrder:
        if status not in STATUSES:
            raise ActionError(f"unknown status {status!r}")
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            self._set_status(s, wo, actor, status, now)
            self._marks(wo)
        return wo

    def _set_status(self, s: Session, wo: WorkOrder, actor: str, status: str,
                    now: datetime) -> None:
        """Status, pause and audit event; the caller refreshes the SLA marks once after."""
        was = wo.status
        if status == was:
            return
        if status == "waiting_client":
            start_pause(wo, now)
        else:
            end_pause(wo, now)
        if status == "resolved":
            wo.resolved_at = now
        elif was == "resolved":
            wo.resolved_at = None
        wo.status = status
        action = {"resolved": "resolved"}.get(status, "reopened" if was == "resolved"
                                              else "status")
        self._event(s, wo, actor, action, {"status": status, "was": was}, now)

    def resolve(self, number: str, actor: str, *, version: int | None = None) -> WorkOrder:
        return self.set_status(number, actor, "resolved", version=version)

    def reopen(self, number: str, actor: str, *, version: int | None = None) -> WorkOrder:
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            if wo.status != "resolved":
                raise ActionError("only a resolved work order can be reopened")
            self._set_status(s, wo, actor, "open", now)
            self._marks(wo)
        return wo

    def called_back(self, number: str, actor: str, text: str = "", *,
                    version: int | None = None) -> WorkOrder:
        """The engineer called the client: the call-back clock stops (an optional note)."""
        text = _note_text(text, required=False)
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            if wo.callback_due is None:
                raise ActionError("this request type has no call-back target")
            if wo.called_back_at is not None:
                raise ActionError("the call back is already logged")
            wo.called_back_at = now
            if wo.status == "new":
                wo.status = "open"
            self._marks(wo)
            self._event(s, wo, actor, "called_back", {"text": text} if text else {}, now)
        return wo

    def note(self, number: str, actor: str, text: str, *,
             version: int | None = None) -> WorkOrder:
        text = _note_text(text, required=True)
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            self._event(s, wo, actor, "note", {"text": text}, now)
        return wo

    def reply(self, number: str, actor: str, body: str, *, wait_for_client: bool = False,
              then: str | None = None, files: Sequence[StoredFile] = (),
              agent_name: str = "", version: int | None = None) -> WorkOrder:
        """Queue a reply to the requester; the first stops the response clock.

        ``then``: a status (``REPLY_THEN``) set in the same transaction, one version step
        with the reply, so the collision guard sees one action. ``files``: already written
        to disk (``triage.desk.uploads.store``); their rows are added here, on the reply's
        outbox row, and the context names them for the renderer."""
        body = body.replace("\r\n", "\n").strip()
        if not body:
            raise ActionError("an empty reply")
        if len(body) > MAX_REPLY:
            raise ActionError(f"a reply is at most {MAX_REPLY} characters")
        if wait_for_client and then is None:
            then = "waiting_client"
        if then is not None and then not in REPLY_THEN:
            raise ActionError(f"a reply cannot set the status {then[:32]!r}")
        now = self._clock()
        with self._sessions.begin() as s:
            wo = self._locked(s, number, version)
            if not wo.requester:
                raise ActionError("this work order has no sender address to reply to")
            in_reply_to, references = self._thread_ids(s, wo)
            context: dict[str, Any] = {
                "number": wo.number, "subject": clean_header(wo.subject, 200),
                "in_reply_to": in_reply_to, "references": references, "body": body,
                "agent": agent_name or actor, "at": now.astimezone(UTC).isoformat()}
            if files:
                context["attachments"] = [f.context() for f in files]
            (outbox_id,) = enqueue(s.connection(), [Mail(
                kind="reply", work_order_id=wo.id, number=str(wo.number),
                to_addr=wo.requester, template="reply", context=context)],
                domain=self._domain, now=now)
            s.add_all(AttachmentRow(message_pk=None, outbox_id=outbox_id, filename=f.filename,
                                    content_type=f.content_type, size=f.size,
                                    sha256=f.sha256, path=f.path) for f in files)
            first = wo.first_response_at is None
            if first:
                wo.first_response_at = now
                waited = contract_calendar(self._policy, wo.contract).business_time_between(
                    wo.received_at, now, pauses_of(wo))
            detail: dict[str, Any] = {"outbox_id": outbox_id, "first_response": first}
            if files:
                detail["attachments"] = len(files)
            self._event(s, wo, actor, "replied", detail, now)
            if wo.status == "new":
                wo.status = "open"
            if then is not None:
                self._set_status(s, wo, actor, then, now)
            elif wo.status == "resolved":
                self._set_status(s, wo, actor, "open", now)
            self._marks(wo)
        if first and self._on_first_response is not None:
            self._on_first_response(waited.total_seconds() / 3600)
        return wo

    def _thread_ids(self, s: Session, wo: WorkOrder) -> tuple[str | None, list[str]]:
        """In-Reply-To: the client's latest message; References: the chain from the root."""
        ids = [m for m in s.scalars(
            select(Message.message_id).where(Message.work_order_id == wo.id,
                                             Message.direction == "in",
                                             Message.message_id.is_not(None))
            .order_by(Message.received_at, Message.id)) if m]
        if wo.root_message_id and wo.root_message_id not in ids:
            ids.insert(0, wo.root_message_id)
        return (ids[-1] if ids else None), ids[-20:]


def changes_since(s: Session, wo_id: int, version: int) -> list[Change]:
    """The audit events that moved the work order past ``version``, oldest first."""
    return [Change(e.at, e.actor, e.action, e.detail or {}, e.wo_version or 0)
            for e in s.scalars(select(Event).where(Event.work_order_id == wo_id,
                                                   Event.wo_version > version)
                               .order_by(Event.id).limit(50))]


def _who(s: Session, name: str) -> str:
    """A staff user's display name (their login name without one)."""
    shown = s.scalar(select(User.display_name).where(User.name == name))
    return shown or name


def _note_text(text: str, *, required: bool) -> str:
    text = text.strip()
    if required and not text:
        raise ActionError("an empty note")
    if len(text) > MAX_NOTE:
        raise ActionError(f"a note is at most {MAX_NOTE} characters")
    return text


__all__ = ["REPLY_THEN", "STATUSES", "STATUS_LABELS", "ActionError", "Change", "Conflict", "Desk",
           "DeskConfig", "NotFound", "changes_since"]
