"""A staff reply as an email: written by a person, so plain text, no Auto-Submitted header
(the client's autoresponder may answer it, and our loop guards handle that), threaded on the
client's last message and tagged with the work-order number like the acknowledgment. Files
the technician attached (the context's ``attachments``, triage.desk.uploads) go with it as
MIME attachments, read from the attachments folder when the mail is rendered."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

from jinja2 import Environment

from triage.ack import ack_subject
from triage.store.model import attachment_path


def render_reply(env: Environment, ctx: Mapping[str, Any], message_id: str, to_addr: str, *,
                 from_address: str, from_name: str, phone: str = "",
                 attachments_dir: Path | None = None) -> EmailMessage:
    """The reply mail; a file it names that is missing (or no ``attachments_dir``) raises,
    so the row is not sent without what the technician attached."""
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
    for a in ctx.get("attachments") or ():
        if attachments_dir is None:
            raise FileNotFoundError("a reply with attachments and no attachments folder")
        data = attachment_path(attachments_dir, str(a["sha256"])).read_bytes()
        maintype, _, subtype = str(a.get("content_type") or "").partition("/")
        if not (maintype and subtype):
            maintype, subtype = "application", "octet-stream"
        msg.add_attachment(data, maintype=maintype, subtype=subtype,
                           filename=str(a.get("filename") or "attachment"))
    return msg


__all__ = ["render_reply"]
