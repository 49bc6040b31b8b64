"""Fuzz the two functions that see every byte a stranger sends before anything is stored:
``triage.parse.parse`` (may return or raise ``ParseError``, nothing else) and the header
screen ``classifiers.screen.screen_headers`` (must always return). Any other exception would
make the pipeline quarantine as "parser error" at best; these tests pin the contract."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from classifiers.screen import ScreenResult, screen_headers
from triage.messages import ParsedEmail
from triage.parse import ParseError, parse

FUZZ = settings(max_examples=200, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

HEADER_NAMES = ["From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "Date",
                "Content-Type", "Content-Transfer-Encoding", "Content-Disposition",
                "MIME-Version", "Auto-Submitted", "Return-Path", "Precedence", "List-Id"]
NASTY = ["=?utf-8?b?", "=?x-unknown?q?caf=E9?=", "=?utf-8?q?a=0D=0Ab?=", "\x00", "\r", "\n",
         "\r\n", "\r\n\t", "<", ">", '"', ";", "boundary=", "charset=", "multipart/mixed",
         "base64", "quoted-printable", "@", "\\", "\xff", "\u202e", "=\r\n", "--"]

header_value = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(max_size=20)), max_size=8
).map("".join)
header_line = st.tuples(
    st.one_of(st.sampled_from(HEADER_NAMES), st.text(min_size=1, max_size=12)), header_value
)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """Header block + optional MIME structure, encoded with an arbitrary codec and errors."""
    headers = draw(st.lists(header_line, max_size=12))
    boundary = draw(st.sampled_from(["B", "", "==x==", "B\r\nX: y"]))
    depth = draw(st.integers(0, 6))
    body = draw(st.text(max_size=200))
    encoding = draw(st.sampled_from(["utf-8", "latin-1", "utf-16", "cp1252"]))
    lines = [f"{k}: {v}" for k, v in headers]
    if depth:
        lines.append(f'Content-Type: multipart/mixed; boundary="{boundary}"')
    text = "\r\n".join(lines) + "\r\n\r\n"
    for _ in range(depth):
        text += f'--{boundary}\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
    text += body
    if draw(st.booleans()):
        text += f"\r\n--{boundary}--\r\n"
    return text.encode(encoding, errors="replace") + draw(st.binary(max_size=40))


def _check(raw: bytes) -> None:
    try:
        out = parse(raw)
    except ParseError:
        return
    assert isinstance(out, ParsedEmail)
    for _, v in out.headers:
        assert "\r" not in v and "\n" not in v and "\x00" not in v
    assert not any(c in out.subject for c in "\r\n\x00")
    assert not any(c in out.from_addr for c in "\r\n\x00 ")


@FUZZ
@given(st.binary(max_size=2000))
def test_parse_arbitrary_bytes(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(messages())
def test_parse_structured_messages(raw: bytes) -> None:
    _check(raw)


@FUZZ
@given(st.dictionaries(st.one_of(st.sampled_from(HEADER_NAMES), st.text(max_size=20)),
                       header_value, max_size=10),
       st.one_of(header_value, st.text()))
def test_screen_headers_always_returns(headers: dict[str, str], sender: str) -> None:
    out = screen_headers(headers, sender)
    assert out is None or isinstance(out, ScreenResult)


@FUZZ
@given(messages())
def test_screen_on_parsed_headers(raw: bytes) -> None:
    """The pipeline feeds the screen what parse produced: that path must hold too."""
    try:
        p = parse(raw)
    except ParseError:
        return
    out = screen_headers(p.header_map(), p.from_addr)
    assert out is None or isinstance(out, ScreenResult)


def test_charset_name_with_nul_is_not_a_crash() -> None:
    raw = (b"From: a@b.test\r\nSubject: x\r\n"
           b'Content-Type: text/plain; charset="utf-8\x00"\r\n\r\nhello\r\n')
    _check(raw)
    assert "hello" in parse(raw).text  # decoded with a fallback, not quarantined
