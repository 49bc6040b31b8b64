"""Who sent a message, read strictly: the From field as RFC 5322 §3.4 defines a mailbox, and
a reason whenever it does not name exactly one sender, unambiguously.

``email.utils.parseaddr`` on this Python (3.11.7; the fix for CVE-2023-27043 came with
3.11.10 and 3.12.6) reads ``dana@harborviewdental.com <attacker@evil>`` as dana, takes the
first of two addresses, and returns ``"v1@a.test,v2@b.test"`` as one address that holds a
comma. A sender we acknowledge, and whose mail we thread onto a work order, must be the one
address the field names. Anything else is still read (staff see it) but marked untrusted:
the store then flags the work order for review, queues no acknowledgment, and never takes
the message for a reply from a work order's requester.

The field is read raw (folded lines joined, encoded words not yet decoded), because a
decoded display name may hold commas or angle brackets that are only text. Display names
and comments are decoded afterwards, to catch one that shows a different address.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header

MAX_FROM = 4096  # characters; a longer From is not read (no real one comes close)

_SPECIALS = '()<>[]:;@\\,"'
_ATOM = re.compile(r'[^ \t\r\n()<>\[\]:;@\\,"]+')
_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[qQbB]\?[^?\s]*\?=")
_LOOKS_LIKE_ADDRESS = re.compile(r"[^\s<>()\"',;:@]+@[^\s<>()\"',;:@]+")
_SEPARATORS = set(',;:<>@"\\()[] \t')


@dataclass(frozen=True)
class Sender:
    addr: str  # lower-cased addr-spec; "" when none could be read
    name: str  # the decoded display name, "" when none
    problem: str | None  # why the field does not name one sender unambiguously; None: it does


@dataclass(frozen=True)
class _Tok:
    kind: str  # atom, quoted, comment, literal, special
    text: str


class _Unreadable(Exception):
    pass


def _tokens(value: str) -> list[_Tok]:
    out: list[_Tok] = []
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c in " \t\r\n":
            i += 1
        elif c == '"':
            j, buf = i + 1, []
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                buf.append(value[j])
                j += 1
            if j >= n:
                raise _Unreadable("an unclosed quoted string")
            out.append(_Tok("quoted", "".join(buf)))
            i = j + 1
        elif c == "(":
            depth, j, buf = 1, i + 1, []
            while j < n and depth:
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                elif value[j] == "(":
                    depth += 1
                elif value[j] == ")":
                    depth -= 1
                if depth:
                    buf.append(value[j])
                j += 1
            if depth:
                raise _Unreadable("an unclosed comment")
            out.append(_Tok("comment", "".join(buf)))
            i = j
        elif c == "[":
            j = value.find("]", i)
            if j < 0:
                raise _Unreadable("an unclosed domain literal")
            out.append(_Tok("literal", value[i:j + 1]))
            i = j + 1
        elif c in _SPECIALS:
            out.append(_Tok("special", c))
            i += 1
        else:
            m = _ATOM.match(value, i)
            assert m is not None  # c is neither white space nor a special
            out.append(_Tok("atom", m.group()))
            i = m.end()
    return out


def _decode(text: str) -> str:
    """Encoded words decoded (RFC 2047), with a replacement for what does not decode."""
    if "=?" not in text:
        return text
    try:
        parts = decode_header(text)
    except MemoryError:
        raise
    except Exception:
        return text
    out = []
    for chunk, charset in parts:
        if isinstance(chunk, bytes):
            try:
                out.append(chunk.decode(charset or "ascii", errors="replace"))
            except LookupError:
                out.append(chunk.decode("utf-8", errors="replace"))
        else:
            out.append(chunk)
    return "".join(out)


def _addr_spec(toks: list[_Tok]) -> str:
    """``local@domain`` from exactly those tokens, or _Unreadable saying why not."""
    at = [i for i, t in enumerate(toks) if t.kind == "special" and t.text == "@"]
    if len(at) != 1:
        if not at and len(toks) == 1 and toks[0].kind == "quoted":
            raise _Unreadable(f"a quoted string, not an address ({toks[0].text[:80]!r})")
        raise _Unreadable("not one address" if at else "no address")
    local, domain = toks[:at[0]], toks[at[0] + 1:]
    if len(local) != 1 or local[0].kind not in ("atom", "quoted"):
        raise _Unreadable("an unreadable local part")
    if len(domain) != 1 or domain[0].kind not in ("atom", "literal"):
        raise _Unreadable("an unreadable domain")
    lp, dom = local[0], domain[0].text
    if _ENCODED_WORD.search(dom) or (lp.kind == "atom" and _ENCODED_WORD.search(lp.text)):
        raise _Unreadable("an encoded word inside the address")
    if lp.kind == "quoted":
        if not lp.text or any(c in _SEPARATORS for c in lp.text):
            raise _Unreadable(f"a quoted local part holding separators ({lp.text[:80]!r})")
        return f'"{lp.text}"@{dom}'  # as parseaddr gives it: quotes kept
    return f"{lp.text}@{dom}"


def _read_one(value: str) -> tuple[str, str, list[str]]:
    """(address, display name, comments) of one From field naming one mailbox."""
    toks = _tokens(value)
    comments = [t.text for t in toks if t.kind == "comment"]
    toks = [t for t in toks if t.kind != "comment"]
    if not toks:
        raise _Unreadable("no address")
    specials = [t.text for t in toks if t.kind == "special"]
    if "," in specials:
        if sum(1 for t in toks if t.kind == "special" and t.text == "@") > 1:
            raise _Unreadable("more than one address")
        raise _Unreadable("a comma outside a quoted name")
    if ":" in specials or ";" in specials:
        raise _Unreadable("a group or a source route, not one mailbox")
    if "<" not in specials:
        if ">" in specials:
            raise _Unreadable("an unmatched '>'")
        return _addr_spec(toks), "", comments
    opens = [i for i, t in enumerate(toks) if t.kind == "special" and t.text == "<"]
    closes = [i for i, t in enumerate(toks) if t.kind == "special" and t.text == ">"]
    if len(opens) > 1 or len(closes) > 1:
        raise _Unreadable("more than one address in angle brackets")
    if not closes or closes[0] < opens[0]:
        raise _Unreadable("an unclosed angle bracket")
    if closes[0] != len(toks) - 1:
        raise _Unreadable("text after the address")
    phrase = toks[:opens[0]]
    addr = _addr_spec(toks[opens[0] + 1:closes[0]])
    bad = [t for t in phrase if t.kind not in ("atom", "quoted")]
    if bad:
        shown = "".join(t.text for t in phrase)[:120]
        if any(t.text == "@" for t in bad):
            raise _Unreadable(f"a display name that is an address ({shown}) before <{addr}>")
        raise _Unreadable(f"special characters in the display name ({shown})")
    name = " ".join(t.text for t in phrase)
    return addr, _decode(name), comments


def read_from(values: list[str]) -> Sender:
    """The sender named by the From field(s) ``values`` (raw, as in the message)."""
    if not values or not any(v.strip() for v in values):
        return Sender("", "", "no From field")
    if len(values) > 1:
        best = read_from(values[:1])
        return Sender(best.addr, best.name, f"{len(values)} From fields")
    value = "".join(values[0].splitlines())
    if len(value) > MAX_FROM:
        return Sender("", "", f"a From field of {len(value)} characters")
    try:
        addr, name, comments = _read_one(value)
    except _Unreadable as e:
        return Sender(_fallback(value), "", f"From is ambiguous or unreadable: {e}")
    addr = addr.lower()
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    for shown in (name, *map(_decode, comments)):
        for other in _LOOKS_LIKE_ADDRESS.findall(shown):
            if other.strip(".").lower() != addr:
                return Sender(addr, name, "the display name shows another address "
                                          f"({other[:120]}) than the sender <{addr}>")
    return Sender(addr, name, None)


def _fallback(value: str) -> str:
    """For an untrusted From, the address a reply would reach (the one in angle brackets),
    so staff see who it really is; else ""."""
    m = re.search(r"<\s*([^<>\s@]+@[^<>\s@]+)\s*>", value)
    return m.group(1).lower() if m else ""
