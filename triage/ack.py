"""Acknowledgments: Jinja2 templates -> mail. Renders, never sends.

Built just before sending, from plain data the outbox row and its work order carry. Nothing
the client wrote reaches the mail except the subject, already stripped of CR/LF and cut to
200 characters, and the sender's first name, only when it is a plain word of letters; the
HTML part escapes both (autoescape), the text part is plain text.

``render_ack_wire`` writes the wire bytes directly (~0.1 ms): an ``EmailMessage`` built with
``policy.default`` and serialised cost ~3.5 ms per acknowledgment, mostly re-parsing the
headers it was just given (bench/results.md). ``render_ack`` is the same mail as an
``EmailMessage`` (tests, and the fallback for the rare mail the wire writer declines:
a non-ASCII address or Message-ID).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email import quoprimime
from email.header import Header
from email.message import EmailMessage
from email.utils import format_datetime, formataddr
from pathlib import Path
from typing import Any

from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    select_autoescape,
)

from triage.calendar import humanize_due
from triage.parse import clean_header
from triage.resources import TEMPLATES_DIR

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
    requester_name: str = ""  # the From display name; see greeting_name
    fulfil_within: str | None = None  # the fulfil target in words: "within 4 hours"


_NAME_WORD = re.compile(r"^[^\W\d_]+(?:['’-][^\W\d_]+)*$")
# Display names that are a mailbox's role, not a person: "Hello Office," reads worse than
# "Hello,". Titles need the surname, which a first-name greeting does not use.
_NOT_A_FIRST_NAME = frozenset({
    "accounting", "accounts", "admin", "billing", "dr", "frontdesk", "helpdesk", "info",
    "it", "miss", "mr", "mrs", "ms", "no-reply", "noreply", "office", "prof", "reception",
    "sales", "support", "team", "the",
})


def ack_view(row: Any, wo: Any, *, timezone: str, priority_meaning: str,
             fulfil_within: str | None) -> AckView:
    """What an acknowledgment says, from its outbox row and its work order's values (ORM
    objects or Core rows): the sender renders from this, and so does the work-order page
    (``triage.desk.sent``), so the page shows the words that were sent."""
    ctx = row.context or {}
    return AckView(
        number=wo.number,
        request_type=wo.request_type,
        priority=wo.priority,
        priority_meaning=priority_meaning,
        to_addr=row.to_addr,
        message_id=row.message_id,
        in_reply_to=ctx.get("in_reply_to"),
        references=tuple(ctx.get("references") or ()),
        subject=str(ctx.get("subject") or ""),
        timezone=timezone,
        response_due=wo.response_due,
        callback_due=wo.callback_due,
        fulfil_due=wo.fulfil_due,
        milestones=tuple(
            (m["name"], datetime.fromisoformat(m["due"])) for m in (wo.milestones or [])
        ),
        date=row.created_at,
        requester_name=wo.requester_name or "",
        fulfil_within=fulfil_within,
    )


def greeting_name(display_name: str) -> str:
    """The client's first name for "Hello Dana,", or "" when there is none to use.

    The display name is the client's own text, so only one plain word of letters (an
    apostrophe or hyphen inside allowed, at most 30 characters) gets through: no link, no
    address, no markup. "Whitfield, Dana" gives "Dana"; "dana" and "DANA" give "Dana".
    """
    name = display_name.strip().strip("\"'")
    if "," in name:
        name = name.split(",", 1)[1]
    words = name.split()
    if not words:
        return ""
    first = words[0].rstrip(".")
    if (len(first) > 30 or not _NAME_WORD.match(first)
            or first.lower() in _NOT_A_FIRST_NAME):
        return ""
    if first.islower() or first.isupper():  # each part capitalised: "Jean-Luc", "O'Brien"
        return re.sub(r"[^\W\d_]+", lambda m: m.group(0).capitalize(), first)
    return first


def fulfil_promise(v: AckView) -> str:
    """The one fulfilment promise: the work order's own target (website_down's 4 h, not its
    priority's 24 h), its due date, and the target in words."""
    if v.milestones:
        return "We will do the work in the steps listed below."
    if v.fulfil_due is None:
        return "We will agree a date for the work with you."
    if v.request_type == "website_down":
        what = "your site restored"
    elif v.priority == "normal":
        what = "this completed"
    else:
        what = "this resolved"
    within = f" ({v.fulfil_within})" if v.fulfil_within else ""
    return f"Our target is to have {what} {humanize_due(v.fulfil_due, v.timezone)}{within}."


def make_env(templates: Path | None = None) -> Environment:
    """Templates from ``templates`` (the ``templates_dir`` setting), else the shipped ones."""
    return Environment(
        loader=FileSystemLoader(str(templates or TEMPLATES_DIR)),
        autoescape=select_autoescape(enabled_extensions=("html.j2",), default=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
    )


def due_lines(v: AckView) -> list[str]:
    """The reply, the call back and the milestones, earliest first, in the client's zone
    and in words (the fulfilment promise is ``fulfil_promise``, said once)."""
    tz = v.timezone
    dated: list[tuple[datetime, str]] = [
        (v.response_due, f"A person from our team will reply {humanize_due(v.response_due, tz)}.")
    ]
    if v.callback_due:
        dated.append((v.callback_due,
                      f"We will call you back {humanize_due(v.callback_due, tz)}."))
    for name, due in v.milestones:
        dated.append((due, f"{name.replace('_', ' ').capitalize()}: {humanize_due(due, tz)}."))
    return [text for _, text in sorted(dated, key=lambda d: d[0])]


def ack_subject(subject: str, number: str) -> str:
    subject = quote_subject(subject)
    tag = f"[{number}]"
    if not subject:
        return f"{tag} We received your request"
    if tag in subject:
        return subject if subject.lower().startswith("re:") else f"Re: {subject}"
    return f"Re: {subject} {tag}" if not subject.lower().startswith("re:") else f"{subject} {tag}"


_TEMPLATES: dict[tuple[int, str], Template] = {}
_ACK_NAMES: dict[tuple[int, str], str] = {}


def _template_name(env: Environment, request_type: str) -> str:
    """The type's own acknowledgment template, else ``other``; looked up once per
    environment and type, not once per acknowledgment."""
    key = (id(env), request_type)
    name = _ACK_NAMES.get(key)
    if name is None:
        try:
            _template(env, f"email/ack/{request_type}.txt.j2")
            name = request_type
        except TemplateNotFound:
            name = "other"
        _ACK_NAMES[key] = name
    return name


def _template(env: Environment, name: str) -> Template:
    """Compiled once per environment: ``get_template`` stats the file on every call to see
    whether it changed, and templates do not change under a running daemon."""
    key = (id(env), name)
    t = _TEMPLATES.get(key)
    if t is None:
        t = _TEMPLATES[key] = env.get_template(name)
    return t


def _bodies(env: Environment, v: AckView, from_address: str, phone: str) -> tuple[str, str]:
    ctx: dict[str, Any] = {
        "number": v.number,
        "priority": v.priority,
        "priority_meaning": v.priority_meaning.rstrip("."),
        "promise": fulfil_promise(v),
        "first_name": greeting_name(v.requester_name),
        "subject": quote_subject(v.subject),
        "due_lines": due_lines(v),
        "urgent": v.priority == "urgent",
        "phone": phone,
        "from_address": from_address,
    }
    name = _template_name(env, v.request_type)
    return (_template(env, f"email/ack/{name}.txt.j2").render(ctx),
            _template(env, f"email/ack/{name}.html.j2").render(ctx))


def render_ack_text(env: Environment, v: AckView, *, from_address: str, phone: str) -> str:
    """The plain-text part, as ``render_ack`` and ``render_ack_wire`` send it."""
    return _bodies(env, v, from_address, phone)[0]


def render_ack(
    env: Environment, v: AckView, *, from_address: str, from_name: str, phone: str
) -> EmailMessage:
    text, html = _bodies(env, v, from_address, phone)
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


_CRLF = "\r\n"


def _fold_ids(name: str, ids: list[str]) -> str:
    """``Name: <a> <b> ...`` folded before an id that would pass 78 characters."""
    lines, line = [], f"{name}:"
    for i in ids:
        if len(line) + 1 + len(i) > 78 and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + i
    lines.append(line)
    return _CRLF.join(lines)


def _part(subtype: str, body: str) -> str:
    """A text part: 7bit when it is plain ASCII in short lines, else quoted-printable (so the
    whole mail is ASCII and needs no 8BITMIME)."""
    lines = body.splitlines()
    if body.isascii() and all(len(line) <= 998 for line in lines):
        cte, payload = "7bit", _CRLF.join(lines)
    else:
        cte = "quoted-printable"
        # UTF-8 bytes as latin-1 characters: each non-ASCII byte becomes one =XX.
        utf8 = "\n".join(lines).encode("utf-8").decode("latin-1")
        payload = quoprimime.body_encode(utf8, eol=_CRLF)
    # The body ends with a line end; the CRLF after it belongs to the next boundary line.
    return (f'Content-Type: text/{subtype}; charset="utf-8"{_CRLF}'
            f"Content-Transfer-Encoding: {cte}{_CRLF}{_CRLF}{payload}{_CRLF}{_CRLF}")


_WORD_BYTES = 42  # UTF-8 bytes per encoded word: "Subject: " + one word fits 78 columns


def subject_header(subject: str) -> str:
    """The folded ``Subject:`` line. ASCII goes through ``email.header``; anything else is
    base64 encoded words (RFC 2047) of at most 42 UTF-8 bytes, split between characters,
    one per line: ``Header.encode`` spent ~1.5 ms finding where to split a 200-character
    subject, more than rendering the rest of the mail (bench/results.md)."""
    if subject.isascii():
        return Header(subject, "us-ascii", header_name="Subject").encode(
            linesep=_CRLF).join(("Subject: ", ""))
    words: list[str] = []
    chunk: list[str] = []
    size = 0
    for ch in subject:
        n = len(ch.encode("utf-8", "surrogatepass"))
        if chunk and size + n > _WORD_BYTES:
            words.append("".join(chunk))
            chunk, size = [], 0
        chunk.append(ch)
        size += n
    words.append("".join(chunk))
    encoded = [f"=?utf-8?b?{base64.b64encode(w.encode('utf-8')).decode('ascii')}?="
               for w in words]
    return "Subject: " + f"{_CRLF} ".join(encoded)


def render_ack_wire(
    env: Environment, v: AckView, *, from_address: str, from_name: str, phone: str
) -> bytes | None:
    """The acknowledgment as the bytes to send (CRLF, ASCII), or None when it holds a
    non-ASCII address or Message-ID (SMTPUTF8 territory: ``render_ack`` handles those)."""
    ids = [v.message_id, v.in_reply_to or "", *v.references]
    if not (v.to_addr.isascii() and from_address.isascii() and all(i.isascii() for i in ids)):
        return None
    if any(c in x for x in (v.to_addr, *ids) for c in "\r\n<> \t"):
        return None  # never true for what the store writes; render_ack would refuse it too
    text, html = _bodies(env, v, from_address, phone)
    subject = ack_subject(v.subject, v.number)
    head = [
        f"From: {formataddr((from_name, from_address), charset='utf-8')}",
        f"To: {v.to_addr}",
        subject_header(subject),
        f"Date: {format_datetime(v.date)}",
        f"Message-ID: <{v.message_id}>",
    ]
    if v.in_reply_to:
        head.append(f"In-Reply-To: <{v.in_reply_to}>")
    if v.references:
        head.append(_fold_ids("References", [f"<{r}>" for r in v.references]))
    boundary = f"=_itx_{secrets.token_hex(12)}"
    head += [
        "Auto-Submitted: auto-replied",
        "X-Auto-Response-Suppress: All",
        f"X-ITX-Work-Order: {v.number}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/alternative; boundary="{boundary}"',
    ]
    wire = (_CRLF.join(head) + _CRLF + _CRLF
            + f"--{boundary}{_CRLF}" + _part("plain", text)
            + f"--{boundary}{_CRLF}" + _part("html", html)
            + f"--{boundary}--{_CRLF}")
    return wire.encode("ascii")
