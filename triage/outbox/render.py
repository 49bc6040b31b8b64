"""From a claimed row to the mail on the wire: one renderer per row kind.

Every kind of mail the outbox carries is a line of ``Renderers``' table: acknowledgments
(``triage.ack``), staff replies (``triage.desk.mail``), escalations and pages (the SLA
watch's, ``triage.slawatch``), staff notifications (``triage.notify_send``). A new kind of
mail is a new renderer and a new line; the sender does not know the kinds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from jinja2 import Environment

from triage.ack import AckView, ack_view, render_ack, render_ack_wire
from triage.desk.mail import render_reply
from triage.notify import NOTIFY
from triage.notify_send import render_notify
from triage.outbox.store import Job
from triage.slawatch import render_escalation
from triage.smtp import WireMessage

log = logging.getLogger(__name__)

Rendered = EmailMessage | WireMessage
Renderer = Callable[[Job], Rendered | None]


@dataclass(frozen=True)
class Letterhead:
    """Who our mail is from."""

    from_address: str
    from_name: str
    phone: str


@dataclass(frozen=True)
class AckPolicy:
    """What an acknowledgment says of the SLA policy, by contract, priority and type."""

    timezone_for: Callable[[str], str]
    priority_meaning: Callable[[str], str]
    fulfil_within: Callable[[str, str], str | None] = lambda _type, _priority: None


class Renderers:
    """The table from row kind to renderer."""

    def __init__(self, env: Environment, letterhead: Letterhead, ack_policy: AckPolicy, *,
                 attachments_dir: Path | None = None) -> None:
        self.env = env
        self.letterhead = letterhead
        self.ack_policy = ack_policy
        self.attachments_dir = attachments_dir  # the files staff replies carry
        self.table: Mapping[str, Renderer] = {
            "ack": self.ack,
            "reply": self.reply,  # staff replies (triage.desk.actions)
            "escalation": self.escalation,  # SLA watch rows
            "page": self.escalation,
            NOTIFY: self.notify,  # staff notifications (triage.notify)
        }

    def render(self, job: Job) -> Rendered | None:
        """The mail for ``job``; None when it cannot be rendered (it is dead-lettered)."""
        renderer = self.table.get(job.kind)
        if renderer is None:
            log.error("outbox row %s: no renderer for kind %r", job.id, job.kind)
            return None
        try:
            return renderer(job)
        except Exception:
            log.exception("rendering outbox row %s failed", job.id)
            return None

    def ack_view(self, job: Job) -> AckView | None:
        """What the acknowledgment ``job`` says; None without its work order."""
        wo, p = job.work_order, self.ack_policy
        if wo is None:
            return None
        return ack_view(job, wo, timezone=p.timezone_for(wo.contract),
                        priority_meaning=p.priority_meaning(wo.priority),
                        fulfil_within=p.fulfil_within(wo.request_type, wo.priority))

    def ack(self, job: Job) -> Rendered | None:
        view, lh = self.ack_view(job), self.letterhead
        if view is None:
            return None
        wire = render_ack_wire(self.env, view, from_address=lh.from_address,
                               from_name=lh.from_name, phone=lh.phone)
        if wire is not None:
            return WireMessage(wire, f"<{view.message_id}>")
        return render_ack(self.env, view, from_address=lh.from_address,
                          from_name=lh.from_name, phone=lh.phone)

    def reply(self, job: Job) -> Rendered:
        lh = self.letterhead
        return render_reply(self.env, job.context, job.message_id, job.to_addr,
                            from_address=lh.from_address, from_name=lh.from_name,
                            phone=lh.phone, attachments_dir=self.attachments_dir)

    def notify(self, job: Job) -> Rendered:
        return render_notify(self.env, job.context, job.message_id, job.to_addr,
                             self.letterhead.from_address)

    def escalation(self, job: Job) -> Rendered:
        return render_escalation(self.env, job.context, job.message_id, job.to_addr,
                                 self.letterhead.from_address)


__all__ = ["AckPolicy", "Letterhead", "Rendered", "Renderer", "Renderers"]
