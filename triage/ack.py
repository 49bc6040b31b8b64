"""Acknowledgments: Jinja2 templates -> ``EmailMessage``. Renders, never sends.

Built just before sending (PERF-NOTES: an EmailMessage costs about as much as the SMTP
exchange), from plain data the outbox row and its work order carry. Nothing the client
wrote reaches the mail except the subject, already stripped of CR/LF and cut to 200
characters; the HTML part escapes it (autoescape), the text part is plain text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from triage.calendar import humanize_due
from triage.parse import clean_header

TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
SUBJECT_LIMIT = 200

_URL = re.compile(r"\b(?:[a-z][a-z0-9+.-]{1,15}://|www\.)\S*", re.IGNORECASE)
_ADDRESS = re.compile(r"\S+@\S+")
_HOSTNAME = re.compile(r"\b((?:[a-z0-9-]{1,63}\.)+)([a-z]{2,24})\b", re.IGNORECASE)


def quote_subject(subject: str) -> str:
    """The client's subject as we may repeat it: one line, at most 200 characters, and no
    working link (invariant 4): a forged sender must not turn our acknowledgments into a
    way to deliver someone's URL from itx.net. Host names are defanged (``evil[.]example``)."""
    text = clean_header(subject, SUBJECT_LIMIT * 2)
    text = _URL.sub("[link removed]", text)
    text = _ADDRESS.sub("[address removed]", text)
    text = _HOSTNAME.sub(lambda m: m.group(1).replace(".", "[.]") + m.group(2), text)
    return text[:SUBJECT_LIMIT]


@dataclass(frozen=True)
class AckView:
    number: str
    request_type: str
    priority: str
    priority_meaning: str
    to_addr: str
    message_id: str  # without angle brackets
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str  # the client's subject
    timezone: str
    response_due: datetime
    callback_due: datetime | None
    fulfil_due: datetime | None
    milestones: tuple[tuple[str, datetime], ...]
    date: datetime


def make_env(templates: Path = TEMPLATES_DIR) -> Environment:
    return Environment(
        loader=FileSystemLoader(str(templates)),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def due_lines(v: AckView) -> list[str]:
    """The promises, earliest first, in the client's zone and in words."""
    tz = v.timezone
    dated: list[tuple[datetime, str]] = [
        (v.response_due, f"A person from our team will reply {humanize_due(v.response_due, tz)}.")
    ]
    if v.callback_due:
        dated.append((v.callback_due,
                      f"We will call you back {humanize_due(v.callback_due, tz)}."))
    for name, due in v.milestones:
        dated.append((due, f"{name.replace('_', ' ').capitalize()}: {humanize_due(due, tz)}."))
    if v.fulfil_due and not v.milestones:
        verb = "restored" if v.request_type == "website_down" else "completed"
        dated.append((v.fulfil_due,
                      f"Our target is to have this {verb} {humanize_due(v.fulfil_due, tz)}."))
    lines = [text for _, text in sorted(dated, key=lambda d: d[0])]
    if not v.fulfil_due and not v.milestones:
        lines.append("We will agree a date for the work with you.")
    return lines


def ack_subject(subject: str, number: str) -> str:
    subject = quote_subject(subject)
    tag = f"[{number}]"
    if not subject:
        return f"{tag} We received your request"
    if tag in subject:
        return subject if subject.lower().startswith("re:") else f"Re: {subject}"
    return f"Re: {subject} {tag}" if not subject.lower().startswith("re:") else f"{subject} {tag}"


def render_ack(
    env: Environment, v: AckView, *, from_address: str, from_name: str, phone: str
) -> EmailMessage:
    ctx = {
        "number": v.number,
        "priority": v.priority,
        "priority_meaning": v.priority_meaning,
        "subject": quote_subject(v.subject),
        "due_lines": due_lines(v),
        "urgent": v.priority == "urgent",
        "phone": phone,
        "from_address": from_address,
    }
    name = v.request_type if (TEMPLATES_DIR / "email" / "ack" / f"{v.request_type}.txt.j2"
                               ).exists() else "other"
    text = env.get_template(f"email/ack/{name}.txt.j2").render(ctx)
    html = env.get_template(f"email/ack/{name}.html.j2").render(ctx)

    msg = EmailMessage()
    msg["From"] = formataddr((from_name, from_address))
    msg["To"] = v.to_addr
    msg["Subject"] = ack_subject(v.subject, v.number)
    msg["Date"] = format_datetime(v.date)
    msg["Message-ID"] = f"<{v.message_id}>"
    if v.in_reply_to:
        msg["In-Reply-To"] = f"<{v.in_reply_to}>"
    if v.references:
        msg["References"] = " ".join(f"<{r}>" for r in v.references)
    # RFC 3834: an automatic reply; Exchange and others honour the X- header too.
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Auto-Response-Suppress"] = "All"
    msg["X-ITX-Work-Order"] = v.number
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    return msg
