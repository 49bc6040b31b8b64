"""The parser's front door: what is done to a message's header section before the standard
library reads it, and how much header work one message may cost.

Tolerance. Readable mail that the stdlib feed parser misreads is repaired in the copy it
parses (the raw bytes are stored as received), and each repair is recorded as a defect:
a UTF-8 byte-order mark before the first header (the feed parser then finds no header at
all), an mbox ``From `` line first (mail exported from an mbox), and white space before a
header's colon (``Subject :``, RFC 5322 §4.5 obs-fields; the feed parser takes such a line
for the start of the body and loses it and every header after it).

Bounds. ``policy.default``'s header parser copies the rest of the value at almost every
token, so its time and memory grow with the square of a header's length: an address list
of 2,850 encoded words took an ingest worker from 121 MB to 451 MB, one of 391 KB 7 s and
3.1 GB. So the header section is bounded here before any parser sees it (fields, bytes,
bytes per field), and ``bounded_value`` bounds each value handed to that parser: an address
list to its first ``MAX_ADDRESSES`` addresses, any value to a little more than we keep of
it. Everything here is linear in the bytes it reads.
"""

from __future__ import annotations

import re

MAX_HEADER_FIELDS = 1000  # top-level header fields parsed (the raw bytes keep the rest)
MAX_HEADER_BYTES = 512 * 1024  # of the top-level header section
MAX_FIELD_BYTES = 64 * 1024  # one header field, folded lines included
MAX_ADDRESSES = 100  # addresses read from one To/Cc/... field
MAX_STRUCTURED = 16 * 1024  # characters of an address or MIME header given to the parser
MAX_UNSTRUCTURED = 64 * 1024  # characters of any other header given to the parser
# What all of one message's headers may cost the parser, in characters of unstructured
# text (about 0.6 µs each here); an address list costs ten times as much per character.
# About a tenth of a second; past it, values are kept as received, not decoded.
DECODE_BUDGET = 200_000
# How far the front door walks line by line; past it, the rest of the section is dropped.
_WALK_LINES = 50_000

OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # Outlook .msg (and any OLE2 document)
_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"[^\r\n]*(?:\r\n|\r|\n|$)")
_FIELD = re.compile(rb"([\x21-\x39\x3b-\x7e]*)([ \t]+)?:")
_BLANK = re.compile(rb"\n\r?\n|\r\r")
# Kept past the field and byte caps (first of each name): what threading, screening and the
# MIME structure read.
_ESSENTIAL = frozenset({
    "from", "sender", "reply-to", "to", "cc", "subject", "date", "message-id", "in-reply-to",
    "references", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition", "auto-submitted", "precedence", "list-id", "list-unsubscribe",
    "return-path", "x-autoreply", "x-autorespond", "x-auto-response-suppress",
})
ADDRESS_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to", "resent-cc",
    "resent-bcc", "resent-sender",
})
_MIME_HEADERS = frozenset({"content-type", "content-disposition", "content-transfer-encoding",
                           "mime-version", "date", "message-id"})


def _eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return b"\r\n"
    return line[-1:] if line[-1:] in (b"\r", b"\n") else b"\r\n"


def _cut_field(field: bytes, limit: int) -> bytes:
    """The field's first ``limit`` bytes, ended at a line end when one is near."""
    head = field[:limit]
    nl = max(head.rfind(b"\n"), head.rfind(b"\r"))
    if nl > limit // 2:
        return head[:nl + 1]
    return head.rstrip(b"\r\n") + _eol(field)


class _Field:
    """One header field as read: its lines, kept up to a little over ``MAX_FIELD_BYTES``."""

    __slots__ = ("lines", "name", "size")

    def __init__(self, name: str | None, line: bytes) -> None:
        self.name, self.lines, self.size = name, [line], len(line)

    def add(self, line: bytes) -> None:
        if self.size <= MAX_FIELD_BYTES:
            self.lines.append(line)
        self.size += len(line)

    def text(self) -> bytes:
        text = b"".join(self.lines)
        return _cut_field(text, MAX_FIELD_BYTES) if self.size > MAX_FIELD_BYTES else text


def front_door(raw: bytes) -> tuple[bytes, list[str]]:
    """What the feed parser should read of ``raw``, and the defects the repairs record.
    Returns ``raw`` itself when nothing needed doing (normal mail: no copy)."""
    defects: list[str] = []
    start = 0
    if raw.startswith(_BOM):
        start = len(_BOM)
        defects.append("byte-order mark before the headers")
    if raw.startswith(b"From ", start) and not _FIELD.match(raw, start):
        m = _LINE.match(raw, start)
        assert m is not None  # _LINE matches anywhere, if only the empty string
        start = m.end()
        defects.append("mbox From line before the headers")

    # The top-level header section as the feed parser delimits it: up to a blank line, or
    # a line that is neither a header field nor a continuation.
    fields: list[_Field] = []
    obsolete: list[str] = []
    pos, end, lines = start, start, 0
    size = len(raw)
    while pos < size:
        m = _LINE.match(raw, pos)
        assert m is not None
        line = m.group()
        lines += 1
        if line in (b"\r\n", b"\n", b"\r") or lines > _WALK_LINES:
            break
        if line[:1] in (b" ", b"\t"):
            if fields:
                fields[-1].add(line)
            else:
                fields.append(_Field(None, line))  # the feed parser records and skips it
        elif fm := _FIELD.match(line):
            name = fm.group(1).decode("ascii").lower()
            if fm.group(2):
                obsolete.append(fm.group(1).decode("ascii"))
                line = line[:fm.start(2)] + line[fm.end(2):]
            fields.append(_Field(name, line))
        elif line.startswith(b"From "):
            fields.append(_Field(None, line))  # a misplaced envelope line: the parser's call
        else:
            break
        pos = end = m.end()
    if lines > _WALK_LINES:
        blank = _BLANK.search(raw, pos)
        end = size if blank is None else blank.start() + 1
        defects.append(f"header section over {_WALK_LINES} lines; the rest was not read")

    for name in dict.fromkeys(obsolete):
        defects.append(f"white space before the colon of {name[:64]} (obsolete syntax)")
    total = sum(field.size for field in fields)
    big = [field for field in fields if field.size > MAX_FIELD_BYTES]
    if (not defects and not big and len(fields) <= MAX_HEADER_FIELDS
            and total <= MAX_HEADER_BYTES):
        return raw, defects

    for field in big:
        defects.append(f"header {field.name or '?'} cut to {MAX_FIELD_BYTES} bytes"[:200])
    kept: list[bytes] = []
    seen: set[str] = set()
    used = dropped = 0
    for field in fields:
        text = field.text()
        if len(kept) < MAX_HEADER_FIELDS and used + len(text) <= MAX_HEADER_BYTES:
            used += len(text)
        elif field.name not in _ESSENTIAL or field.name in seen:
            dropped += 1
            continue
        kept.append(text)
        if field.name:
            seen.add(field.name)
    if dropped:
        defects.append(f"header section: {dropped} fields past {MAX_HEADER_FIELDS} fields or "
                       f"{MAX_HEADER_BYTES} bytes not read")
    return b"".join(kept) + raw[end:], defects


def _split_addresses(value: str, keep: int) -> tuple[list[str], int]:
    """The top-level comma-separated items of an address list (commas inside quotes,
    comments, angle brackets and groups do not split): the first ``keep`` and the count."""
    items: list[str] = []
    count = 0
    depth = 0  # comment nesting
    quoted = angle = escaped = False
    begin = 0
    for i, c in enumerate(value):
        if escaped:
            escaped = False
        elif c == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = c != '"'
        elif depth:
            depth += {"(": 1, ")": -1}.get(c, 0)
        elif c == '"':
            quoted = True
        elif c == "(":
            depth = 1
        elif c == "<":
            angle = True
        elif c == ">":
            angle = False
        elif c == "," and not angle:
            count += 1
            if len(items) < keep:
                items.append(value[begin:i])
            begin = i + 1
    if value[begin:].strip():
        count += 1
        if len(items) < keep:
            items.append(value[begin:])
    return items, count


def decode_cost(name: str, value: str) -> int:
    """What decoding ``value`` costs the ``policy.default`` parser, in DECODE_BUDGET units."""
    return len(value) * (10 if name.lower() in ADDRESS_HEADERS else 1)


def bounded_value(name: str, value: str) -> tuple[str, str | None]:
    """``value`` cut to what the ``policy.default`` parser may be given for a header called
    ``name``, and the defect to record when it was cut."""
    lname = name.lower()
    if lname in ADDRESS_HEADERS:
        if value.count(",") < MAX_ADDRESSES:  # then there are not too many addresses
            count = 1
        else:
            items, count = _split_addresses(value, MAX_ADDRESSES)
            if count > MAX_ADDRESSES:
                value = ",".join(items)
        defect = (f"{name[:64]}: {count} addresses; the first {MAX_ADDRESSES} were read"
                  if count > MAX_ADDRESSES else None)
        if len(value) > MAX_STRUCTURED:
            cut = value.rfind(",", 0, MAX_STRUCTURED)
            value = value[:cut if cut > 0 else MAX_STRUCTURED]
            defect = defect or f"{name[:64]}: cut to {len(value)} characters before decoding"
        return value, defect
    limit = MAX_STRUCTURED if lname in _MIME_HEADERS else MAX_UNSTRUCTURED
    if len(value) > limit:
        return value[:limit], f"{name[:64]}: cut to {limit} characters before decoding"
    return value, None
