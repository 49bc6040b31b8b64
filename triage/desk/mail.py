"""A staff reply as an email: written by a person, so plain text, no Auto-Submitted header
(the client's autoresponder may answer it, and our loop guards handle that), threaded on the
client's last message and tagged with the work-order number like the acknowledgment."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from typing import Any

from jinja2 import Environment

from triage.ack import ack_subject


def render_reply(env: Environment, ctx: Mapping[str, Any], message_id: str, to_addr: str, *,
                 from_address: str, from_name: str, phone: str = "") -> EmailMessage:
    number = str(ctx["number"])
    text = env.get_template("email/reply.txt.j2").render(
        body=str(ctx["body"]), agent=str(ctx.get("agent") or "ITX Helpdesk"), number=number,
        from_address=from_address, phone=phone)
    msg = EmailMessage()
    msg["From"] = formataddr((from_name, from_address))
    msg["To"] = to_addr
    subject = str(ctx.get("subject") or "")
    msg["Subject"] = ack_subject(subject, number) if subject else f"[{number}] Your request"
    msg["Date"] = format_datetime(datetime.fromisoformat(str(ctx["at"])))
    msg["Message-ID"] = f"<{message_id}>"
    if ctx.get("in_reply_to"):
        msg["In-Reply-To"] = f"<{ctx['in_reply_to']}>"
    if ctx.get("references"):
        msg["References"] = " ".join(f"<{r}>" for r in ctx["references"])
    msg["X-ITX-Work-Order"] = number
    msg.set_content(text)
    return msg


__all__ = ["render_reply"]
