"""Notifications to staff, written as outbox rows (the builders are here; the sending is
``triage.notify_send``, so writers never import the sender).

Two kinds of row:

- ``notify``: a mail to a technician, when someone else assigns a work order to them and
  when the client replies on a work order assigned to them (``templates/email/notify.txt.j2``,
  plain text, staff-only, sent with the same retries as every mail);
- ``webhook``: a POST of ``{"text": ...}`` to the incoming-webhook URL of a Slack or Teams
  channel (``notify_webhook_url``), for a new urgent work order and for an SLA breach.

Each row carries a ``notify_key`` naming the one notification it is (``assigned:WO:VERSION``,
``client_reply:WO:VERSION``, ``webhook:urgent:WO``, ``webhook:breached:WO:TARGET``): the
column is UNIQUE, so no path, replay or racing process can queue one twice, and the row
commits with the change it reports (the transactional outbox) or not at all.

A webhook row's recipient is the fixed label ``webhook``, never the URL (which is a secret):
the URL is read from the settings at send time. Webhook rows are claimed apart from mail
(``OutboxStore.claim(kinds=...)``), so an SMTP outage does not hold them and a failing
webhook does not hold mail; among themselves they leave in order, each failure backed off
with the outbox's retry policy until it is dead-lettered (a ``webhook_failed`` event). A
POST the endpoint received but whose answer was lost is sent again: at least once, never
queued twice.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from triage.outbox.enqueue import Mail
from triage.parse import clean_header

NOTIFY = "notify"
WEBHOOK = "webhook"
WEBHOOK_RECIPIENT = "webhook"  # the label a webhook row carries instead of the secret URL
TEMPLATE = "email/notify.txt.j2"
EXCERPT = 500  # characters of a client's reply quoted to the assignee


def _wo_context(wo: Any, client: str) -> dict[str, Any]:
    return {"number": wo.number, "subject": clean_header(wo.subject or "", 200),
            "requester": wo.requester or "", "client": client,
            "request_type": str(wo.request_type).replace("_", " "), "priority": wo.priority}


def assigned(wo: Any, client: str, to_addr: str, by: str, version: int,
             now: datetime) -> Mail:
    """The mail telling ``to_addr`` that ``by`` assigned ``wo`` to them."""
    return Mail(kind=NOTIFY, work_order_id=wo.id, number=str(wo.number), to_addr=to_addr,
                template=TEMPLATE,
                context={**_wo_context(wo, client), "event": "assigned", "by": by,
                         "at": now.astimezone(UTC).isoformat()},
                notify_key=f"assigned:{wo.id}:{version}")


def client_reply_context(wo: Any, client: str, text: str, now: datetime) -> dict[str, Any]:
    """What the assignee's mail about a client's reply says (the store writes the row)."""
    excerpt = text.strip()[:EXCERPT]
    return {**_wo_context(wo, client), "event": "client_reply", "excerpt": excerpt,
            "at": now.astimezone(UTC).isoformat()}


def urgent_context(number: str | None, subject: str, client: str, request_type: str,
                   now: datetime) -> dict[str, Any]:
    """A webhook row's context for a new urgent work order (``number`` None: the store's,
    filled in once written)."""
    return {"event": "urgent", "number": number, "client": client,
            "subject": clean_header(subject, 200), "request_type": request_type,
            "at": now.astimezone(UTC).isoformat()}


def breached(wo: Any, client: str, target: str, due: datetime, now: datetime) -> Mail:
    """The webhook row for an SLA breach, once per work order and target."""
    return Mail(kind=WEBHOOK, work_order_id=wo.id, number=str(wo.number),
                to_addr=WEBHOOK_RECIPIENT, template=WEBHOOK,
                context={"event": "breached", "number": wo.number, "client": client,
                         "subject": clean_header(wo.subject or "", 200),
                         "request_type": wo.request_type, "target": target,
                         "due": due.astimezone(UTC).isoformat(),
                         "at": now.astimezone(UTC).isoformat()},
                notify_key=f"webhook:breached:{wo.id}:{target}")


def _plain(value: object) -> str:
    """Client text as text in a channel: Slack reads ``<!channel>`` or ``<https://x|y>`` as
    a mention or a link, so its three control characters are escaped as Slack asks."""
    return str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def webhook_text(ctx: dict[str, Any]) -> str:
    """What a webhook row posts: one line a channel shows as it is."""
    kind = str(ctx.get("request_type", "")).replace("_", " ")
    subject = f' - "{_plain(ctx["subject"])}"' if ctx.get("subject") else ""
    ctx = {**ctx, "client": _plain(ctx.get("client", ""))}
    if ctx.get("event") == "breached":
        due = datetime.fromisoformat(str(ctx["due"]))
        return (f"SLA breached on work order {ctx['number']} ({ctx['client']}, {kind}): the "
                f"{str(ctx['target']).replace('_', ' ')} target was due "
                f"{due:%Y-%m-%d %H:%M} UTC{subject}")
    return f"New urgent work order {ctx['number']} from {ctx['client']}: {kind}{subject}"


__all__ = ["EXCERPT", "NOTIFY", "TEMPLATE", "WEBHOOK", "WEBHOOK_RECIPIENT", "assigned",
           "breached", "client_reply_context", "urgent_context", "webhook_text"]
