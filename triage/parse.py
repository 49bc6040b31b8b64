"""bytes -> ParsedEmail. Pure; raises ``ParseError`` only when nothing usable can be read, and
otherwise records what was wrong in ``defects``.

The MIME structure is read with ``compat32``: ``policy.default`` builds a header object for
every Content-Type each time the parser or we ask for it, which was most of the parse. The
MIME headers are still read as ``policy.default`` reads them (``_Policy``, memoised), and
every other header is decoded once with ``policy.default``'s header parser where it has work
to do, so what comes out is what a ``policy.default`` parse gives.

Every string that leaves here is safe to store and display as text: CR, LF and NUL are
removed from header values (header injection), bodies are decoded with a charset that
actually decodes them (declared charsets lie), and file names are reduced to a bare name.
"""

from __future__ import annotations

import email
import email.policy
import functools
import hashlib
import logging
import re
import secrets
from datetime import datetime
from email.message import Message
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Any

from classifiers.htmltext import html_to_text
from triage.headers import DECODE_BUDGET, OLE2_MAGIC, bounded_value, decode_cost, front_door
from triage.messages import Attachment, ParsedEmail
from triage.sender import read_from

log = logging.getLogger(__name__)

MAX_TEXT = 1_000_000  # characters of body text kept; the raw bytes keep the rest
# A MemoryError (the ingest worker's address-space limit) always propagates: a part or
# header dropped for it would store an incomplete message as if it were whole.
_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CRLF = re.compile(r"[\r\n\x00]+")
_MSGID = re.compile(r"<([^<>\s]{1,900})>")
_FALLBACK_CHARSETS = ("utf-8", "cp1252", "latin-1")


class ParseError(Exception):
    """The bytes are not a message at all (empty, or no header could be read)."""


def clean_header(value: str, limit: int = 2000) -> str:
    """One line, no control characters: what a header value may be when shown or reused."""
    return _CTRL.sub("", _CRLF.sub(" ", value)).strip()[:limit]


_DECODE = email.policy.default
_MIME_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding"})


@functools.lru_cache(maxsize=4096)
def _mime_value(name: str, value: str) -> str:
    return str(_DECODE.header_fetch_parse(name, value))


@functools.lru_cache(maxsize=8)
def _long_mime_value(name: str, value: str) -> str:
    """A long value, bounded (triage.headers): few are kept, but compat32 reads the same
    Content-Type once for each parameter it looks up."""
    return str(_DECODE.header_fetch_parse(name, bounded_value(name, value)[0]))


class _Policy(email.policy.Compat32):
    """compat32, except that the headers the MIME structure depends on read as under
    ``policy.default`` (decoded, unfolded), so parts, charsets and file names come out the
    same. The same values recur on every part and message: each is parsed once."""

    def header_fetch_parse(self, name: str, value: str) -> Any:
        if name.lower() in _MIME_HEADERS and isinstance(value, str):
            try:
                if len(value) > 500:  # rare, and a hostile one may be huge
                    return _long_mime_value(name.lower(), value)
                return _mime_value(name.lower(), value)
            except MemoryError:  # propagates: see the note by MAX_TEXT
                raise
            except Exception:  # as compat32 would: the raw value
                pass
        return super().header_fetch_parse(name, value)


_PARSE = _Policy()


def _all_headers(msg: Message, defects: list[str]) -> tuple[tuple[str, str], ...]:
    """Every header once, decoded. Plain ASCII without encoded words needs no parser (the
    policy would only unfold it): Received/DKIM/ARC chains are most of a message's headers,
    and the policy's parse of each is the largest single cost of ingestion (bench/results.md).
    """
    out: list[tuple[str, str]] = []
    budget = DECODE_BUDGET
    exempt = {"from", "subject"}  # the first of each is decoded whatever came before it
    for k, raw in msg.raw_items():
        if isinstance(raw, str) and raw.isascii() and "=?" not in raw:
            value = "".join(raw.splitlines())
            out.append((clean_header(k, 128), clean_header(value, 8000)))
            continue
        bounded, cut = bounded_value(k, raw) if isinstance(raw, str) else (raw, None)
        if cut:
            defects.append(clean_header(cut, 200))
        cost = decode_cost(k, str(bounded))
        if cost > budget and k.lower() not in exempt:
            defects.append(f"header {clean_header(k, 64)}: not decoded (the message's "
                           "header decoding budget is spent)")
            value = str(raw)[:8000].encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        else:
            exempt.discard(k.lower())
            budget -= cost
            try:
                value = str(_DECODE.header_fetch_parse(k, bounded))
            except MemoryError:  # propagates: see the note by MAX_TEXT
                raise
            except Exception as e:
                defects.append(f"header {clean_header(k, 64)}: {type(e).__name__}")
                value = str(raw)
        out.append((clean_header(k, 128), clean_header(value, 8000)))
    return tuple(out)


def _first(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    return next((v for k, v in headers if k.lower() == name), None)


def _decode_bytes(data: bytes, declared: str | None, defects: list[str]) -> str:
    """Decode with the declared charset if it truly decodes, else the first that does."""
    tried: list[str] = []
    for cs in (declared, *_FALLBACK_CHARSETS):
        if not cs or cs in tried:
            continue
        tried.append(cs)
        try:
            text = data.decode(cs)
        except (LookupError, UnicodeDecodeError, ValueError):  # ValueError: NUL in the name
            continue
        if declared and cs != declared.lower():
            defects.append(f"charset {declared!r} did not decode; used {cs}")
        return text
    return data.decode("utf-8", errors="replace")  # unreachable: latin-1 decodes anything


def _part_text(part: Message, defects: list[str]) -> str:
    try:
        payload = part.get_payload(decode=True)
    except MemoryError:  # propagates: see the note by MAX_TEXT
        raise
    except Exception as e:
        defects.append(f"payload: {type(e).__name__}")
        payload = None
    if not isinstance(payload, bytes):
        raw = part.get_payload()
        return raw if isinstance(raw, str) else ""
    charset = part.get_content_charset()
    return _decode_bytes(payload, charset.lower() if charset else None, defects)


def _safe_filename(name: str | None, index: int) -> str:
    name = clean_header(name or "", 400).replace("\\", "/").rsplit("/", 1)[-1]
    name = name.strip(". ") or f"attachment-{index}"
    return name[:255]


def _message_id(value: str | None) -> str | None:
    if not value:
        return None
    m = _MSGID.search(value)
    if m:
        return m.group(1)
    v = value.strip()
    return v if v and " " not in v and len(v) <= 900 else None


def _id_list(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    ids = _MSGID.findall(value)
    return tuple(ids[-50:])  # the newest 50 are enough to thread


# Base64 bodies are lifted out before the stdlib parser sees the message (see _Lifted).
_LIFT_MIN_MESSAGE = 64 * 1024
_LIFT_MIN_BLOCK = 16 * 1024
_B64_CTE = re.compile(rb"(?im)^content-transfer-encoding:[ \t]*base64[ \t]*\r?$")
_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\r\n"


class _Lifted:
    """Large base64 bodies cut out of a message and put back into its parts' payloads.

    The stdlib feed parser reads a message line by line in Python: a 400 KB attachment is
    ~5,000 lines and ~12 ms, 5 % of messages took over half of all parse time. Such a body
    is replaced by one marker line before parsing and restored, byte for byte, in the
    payload of whichever part holds the marker, before anything reads that payload; so
    every part, payload and defect is what a parse of the whole message gives. A block is
    lifted only when it holds nothing but the base64 alphabet and line ends, so it holds
    no boundary ("-" is not in the alphabet), no header (nor ":") and no marker of ours.
    """

    def __init__(self, raw: bytes) -> None:
        self.blocks: dict[str, str] = {}
        self.skeleton = raw
        if len(raw) < _LIFT_MIN_MESSAGE:
            return
        self.token = "TRIAGE-LIFTED-" + secrets.token_hex(8)
        out: list[bytes] = []
        pos = 0
        at = 0
        while m := _B64_CTE.search(raw, at):  # from the last cut: a lifted body is not read
            at = m.end()
            start = _body_start(raw, at)
            if start < 0:
                continue
            end = raw.find(b"\n-", start)  # the next boundary ends a base64 body
            end = len(raw) if end < 0 else end + 1
            # The body's last line stays: the line end before a boundary belongs to it.
            cut = raw.rfind(b"\n", start, end - 1) + 1
            if cut - start < _LIFT_MIN_BLOCK or raw[start:cut].translate(None, _B64_ALPHABET):
                continue
            eol = b"\r\n" if raw[cut - 2:cut] == b"\r\n" else b"\n"
            marker = f"{self.token}-{len(self.blocks)}".encode() + eol
            self.blocks[marker.decode()] = raw[start:cut].decode("ascii")
            out += (raw[pos:start], marker)
            pos = at = cut
        if self.blocks:
            out.append(raw[pos:])
            self.skeleton = b"".join(out)

    def restore(self, part: Message) -> None:
        payload = part.get_payload()
        if isinstance(payload, str) and self.token in payload:
            for marker, block in self.blocks.items():
                payload = payload.replace(marker, block)
            part.set_payload(payload)


def _body_start(raw: bytes, pos: int) -> int:
    """Where the body begins after the header line ending at ``pos``; -1 if not within a
    part header's reach (then nothing is lifted there)."""
    limit = pos + 16 * 1024
    ends = [i for i in (raw.find(b"\n\r\n", pos, limit), raw.find(b"\n\n", pos, limit))
            if i >= 0]
    if not ends:
        return -1
    i = min(ends)
    return i + (3 if raw[i + 1:i + 2] == b"\r" else 2)


def parse(raw: bytes) -> ParsedEmail:
    if not raw or not raw.strip():
        raise ParseError("empty message")
    # Line ends normalised: Dovecot stores LF and serves CRLF, so the same message read two
    # ways must hash the same (the hash is the dedupe key when Message-ID is missing).
    content_hash = hashlib.sha256(raw.replace(b"\r\n", b"\n")).hexdigest()
    if raw.startswith(OLE2_MAGIC):
        raise ParseError("an Outlook .msg file (OLE2 compound document), not a mail message")
    data, defects = front_door(raw)
    lifted = _Lifted(data)
    msg = email.message_from_bytes(lifted.skeleton, policy=_PARSE)
    if not msg.keys():
        raise ParseError("no header could be read")
    defects.extend(type(d).__name__ for d in msg.defects)

    headers = _all_headers(msg, defects)
    subject = _first(headers, "subject") or ""
    from_value = _first(headers, "from") or ""
    from_name, from_addr = parseaddr(from_value)
    sender = read_from([v for k, v in msg.raw_items() if k.lower() == "from"
                        and isinstance(v, str)])
    if sender.problem:
        defects.append(clean_header(sender.problem, 300))
        from_addr, from_name = sender.addr or from_addr, from_name or sender.name
    from_addr = clean_header(from_addr, 320).lower()
    if from_addr and ("@" not in from_addr or any(c in from_addr for c in " ,;<>")):
        defects.append("unusable From address")
        from_addr = ""
    to = tuple(
        clean_header(a, 320).lower() for _, a in getaddresses([_first(headers, "to") or ""]) if a
    )
    date: datetime | None = None
    date_value = _first(headers, "date")
    if date_value:
        try:
            date = parsedate_to_datetime(date_value)
            if date.tzinfo is None:
                date = None
        except (TypeError, ValueError, IndexError):
            defects.append("unparseable Date")

    text_parts: list[str] = []
    html_parts: list[str] = []
    attachments: list[Attachment] = []
    try:
        parts = list(msg.walk())
    except RecursionError as e:
        raise ParseError("MIME structure nested too deeply") from e
    for i, part in enumerate(parts):
        if part.is_multipart():
            continue
        if lifted.blocks:
            lifted.restore(part)
        ctype = part.get_content_type()
        disposition = part.get_content_disposition()
        filename = part.get_filename() if disposition or ctype not in ("text/plain",
                                                                       "text/html") else None
        if disposition == "attachment" or filename or not ctype.startswith("text/"):
            if ctype == "message/delivery-status" or ctype.startswith("multipart/"):
                continue
            try:
                payload = part.get_payload(decode=True)
            except MemoryError:  # propagates: see the note by MAX_TEXT
                raise
            except Exception as e:
                defects.append(f"attachment payload: {type(e).__name__}")
                payload = None
            data = payload if isinstance(payload, bytes) else b""
            attachments.append(
                Attachment(
                    filename=_safe_filename(filename, i),
                    content_type=clean_header(ctype, 255),
                    size=len(data),
                    sha256=hashlib.sha256(data).hexdigest(),
                    payload=data,
                )
            )
        elif ctype == "text/html":
            html_parts.append(_part_text(part, defects))
        else:
            text_parts.append(_part_text(part, defects))

    html = "\n".join(html_parts) if html_parts else None
    text = "\n\n".join(t for t in text_parts if t.strip())
    if not text.strip() and html:
        text = html_to_text(html)
    text = text.replace("\x00", "")
    if len(text) > MAX_TEXT:
        defects.append(f"body text truncated to {MAX_TEXT} characters")
        text = text[:MAX_TEXT]

    return ParsedEmail(
        message_id=_message_id(_first(headers, "message-id")),
        subject=subject,
        from_addr=from_addr,
        from_name=clean_header(from_name, 255),
        to=to,
        date=date,
        in_reply_to=_message_id(_first(headers, "in-reply-to")),
        references=_id_list(_first(headers, "references")),
        headers=headers,
        text=text,
        html=html.replace("\x00", "")[:MAX_TEXT] if html else None,
        attachments=tuple(attachments),
        defects=tuple(dict.fromkeys(defects)),
        content_hash=content_hash,
        from_problem=clean_header(sender.problem, 300) if sender.problem else None,
    )


def build_reply_headers(parsed: ParsedEmail) -> tuple[str | None, tuple[str, ...]]:
    """In-Reply-To and References for a mail that answers ``parsed`` (RFC 5322 3.6.4)."""
    refs = list(parsed.references)
    if parsed.message_id and parsed.message_id not in refs:
        refs.append(parsed.message_id)
    return parsed.message_id, tuple(refs[-20:])


