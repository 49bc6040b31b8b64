"""Large base64 bodies are lifted out before the stdlib parser runs (triage.parse._Lifted):
the parse must come out exactly as a parse of the whole message, for every layout."""

from __future__ import annotations

import base64
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import triage.parse as parse_mod
from tests.hostile_corpus import corpus
from triage.parse import _Lifted, parse

HEAD = ("From: Ann <ann@client.test>\nTo: helpdesk@itx.net\nSubject: scan attached\n"
        "Message-ID: <{n}@client.test>\nDate: Wed, 25 Nov 2026 14:00:00 -0500\n"
        "MIME-Version: 1.0\n")


def _b64(size: int, seed: int, width: int = 76) -> str:
    data = random.Random(seed).randbytes(size)
    text = base64.b64encode(data).decode()
    return "\n".join(text[i:i + width] for i in range(0, len(text), width)) + "\n"


def whole(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> parse_mod.ParsedEmail:
    """The parse without lifting: the reference."""
    with monkeypatch.context() as m:
        m.setattr(parse_mod, "_LIFT_MIN_MESSAGE", 1 << 62)
        return parse(raw)


def attachment_mail(n: int, *, size: int = 200_000, eol: str = "\r\n", last: bool = True,
                    nested: bool = False, width: int = 76) -> bytes:
    att = ("--b1\nContent-Type: application/pdf; name=\"scan.pdf\"\n"
           "Content-Disposition: attachment; filename=\"scan.pdf\"\n"
           f"Content-Transfer-Encoding: base64\n\n{_b64(size, n, width)}")
    text = "--b1\nContent-Type: text/plain; charset=utf-8\n\nThe printer fails, scan attached.\n"
    parts = text + att if last else att + text
    body = f"{parts}--b1--\n"
    if nested:
        body = (f"--outer\nContent-Type: multipart/mixed; boundary=\"b1\"\n\n{body}"
                "--outer\nContent-Type: text/html\n\n<p>hello</p>\n--outer--\n")
        ctype = "multipart/mixed; boundary=\"outer\""
    else:
        ctype = "multipart/mixed; boundary=\"b1\""
    raw = HEAD.format(n=n) + f"Content-Type: {ctype}\n\n" + body
    return raw.replace("\n", eol).encode()


LAYOUTS = {
    "crlf, attachment last": attachment_mail(1),
    "lf, attachment last": attachment_mail(2, eol="\n"),
    "attachment first": attachment_mail(3, last=False),
    "nested multipart": attachment_mail(4, nested=True),
    "64-column lines": attachment_mail(5, width=64),
    "single-part base64 body": (HEAD.format(n=6) + "Content-Type: application/octet-stream\n"
                                "Content-Transfer-Encoding: base64\n\n"
                                + _b64(150_000, 6)).replace("\n", "\r\n").encode(),
    "base64 text body": (HEAD.format(n=7) + "Content-Type: text/plain; charset=utf-8\n"
                         "Content-Transfer-Encoding: base64\n\n"
                         + "\n".join(base64.b64encode(("The website is down. " * 6000)
                                                      .encode()).decode()[i:i + 76]
                                     for i in range(0, 168_000, 76)) + "\n").encode(),
}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_lifted_parse_is_the_whole_parse(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = LAYOUTS[name]
    lifted = _Lifted(raw)
    assert lifted.blocks, "the layout should have been lifted"
    assert len(lifted.skeleton) < len(raw) // 10
    got = parse(raw)
    assert got == whole(raw, monkeypatch)
    if "attachment" in name or name.startswith(("nested", "64")):
        n = int((got.message_id or "").split("@")[0])
        assert [a.filename for a in got.attachments] == ["scan.pdf"]
        assert got.attachments[0].payload == random.Random(n).randbytes(200_000)


NOT_LIFTED = {
    # A character outside the alphabet anywhere in the body: left for the parser.
    "junk in the body": attachment_mail(11).replace(b"\r\n", b"\r\n!", 40),
    "small message": attachment_mail(12, size=10_000),
    # No blank line within reach of the header: nothing cut.
    "blank line out of reach": (HEAD.format(n=13) + "Content-Transfer-Encoding: base64\n"
                                + ("X-Pad: " + "a" * 70 + "\n") * 300 + "\n"
                                + _b64(120_000, 13)).encode(),
}


@pytest.mark.parametrize("name", list(NOT_LIFTED))
def test_unliftable_bodies_are_left_alone(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = NOT_LIFTED[name]
    if name == "junk in the body":
        # The junk lines break the run early: whatever is lifted must still parse the same.
        assert parse(raw) == whole(raw, monkeypatch)
        return
    assert not _Lifted(raw).blocks
    assert parse(raw) == whole(raw, monkeypatch)


def test_a_marker_lookalike_in_the_mail_is_not_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """The marker carries a fresh random token each parse: text that looks like one from an
    earlier parse (or an attacker) stays as written."""
    raw = attachment_mail(21)
    earlier = _Lifted(raw)
    fake = next(iter(earlier.blocks))  # a real marker of another parse
    raw = raw.replace(b"scan attached.", fake.strip().encode(), 1)
    got = parse(raw)
    assert fake.strip() in got.text
    assert got == whole(raw, monkeypatch)


def test_hostile_corpus_parses_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every hostile message (30 MB attachment, broken base64, 50-deep nesting ...) gives the
    same parse, or the same error, with and without lifting."""
    lifted_any = 0
    for h in corpus(per_kind=4):
        lifted_any += bool(_Lifted(h.raw).blocks)
        try:
            expected: object = whole(h.raw, monkeypatch)
        except Exception as e:  # the same failure must come out
            expected = type(e)
        try:
            got: object = parse(h.raw)
        except Exception as e:
            got = type(e)
        assert got == expected, h.kind
    assert lifted_any >= 1  # the 30 MB attachment at least


@st.composite
def multipart(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    parts = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["b64", "text", "b64-junk", "b64-short-last"]))
        size = draw(st.sampled_from([100, 20_000, 70_000]))
        body = _b64(size, i, draw(st.sampled_from([60, 76])))
        if kind == "b64-junk":
            cut = draw(st.integers(0, len(body) - 1))
            body = body[:cut] + draw(st.sampled_from(["-", ":", " ", "--b1\n", "\n\n"])) \
                + body[cut:]
        if kind == "b64-short-last":
            body += "QUJD\n"
        if kind == "text":
            parts.append(f"--b1\nContent-Type: text/plain\n\nhello {i}\n{body}")
        else:
            parts.append(f"--b1\nContent-Type: application/octet-stream; name=\"f{i}\"\n"
                         f"Content-Transfer-Encoding: base64\n\n{body}")
    raw = (HEAD.format(n=99) + "Content-Type: multipart/mixed; boundary=\"b1\"\n\n"
           + "".join(parts) + draw(st.sampled_from(["--b1--\n", "--b1--", ""])))
    return raw.replace("\n", eol).encode()


@settings(max_examples=60, deadline=None)
@given(multipart())
def test_generated_multiparts_parse_the_same(raw: bytes) -> None:
    with pytest.MonkeyPatch.context() as m:
        m.setattr(parse_mod, "_LIFT_MIN_MESSAGE", 1 << 62)
        expected = parse(raw)
    assert parse(raw) == expected
