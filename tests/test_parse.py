from __future__ import annotations

import hashlib

import pytest

from triage.parse import ParseError, build_reply_headers, clean_header, parse

PLAIN = (
    b"From: Dana Whitfield <Dana@HarborviewDental.com>\r\n"
    b"To: helpdesk@itx.net\r\n"
    b"Subject: Outlook keeps asking for my password\r\n"
    b"Date: Fri, 27 Nov 2026 19:30:00 -0500\r\n"
    b"Message-ID: <abc123@harborviewdental.com>\r\n"
    b"References: <r1@x> <r2@x>\r\n"
    b"In-Reply-To: <r2@x>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n\r\n"
    b"Hi, I am locked out of my mailbox.\r\n"
)


def test_plain_message_fields() -> None:
    p = parse(PLAIN)
    assert p.message_id == "abc123@harborviewdental.com"
    assert p.from_addr == "dana@harborviewdental.com"
    assert p.from_name == "Dana Whitfield"
    assert p.subject == "Outlook keeps asking for my password"
    assert p.to == ("helpdesk@itx.net",)
    assert p.date is not None and p.date.utcoffset() is not None
    assert p.references == ("r1@x", "r2@x") and p.in_reply_to == "r2@x"
    assert "locked out" in p.text
    assert p.content_hash == hashlib.sha256(PLAIN.replace(b"\r\n", b"\n")).hexdigest()
    assert parse(PLAIN.replace(b"\r\n", b"\n")).content_hash == p.content_hash
    assert ("Subject", "Outlook keeps asking for my password") in p.headers
    assert build_reply_headers(p) == (
        "abc123@harborviewdental.com",
        ("r1@x", "r2@x", "abc123@harborviewdental.com"),
    )


def test_lying_charset_is_decoded_and_recorded() -> None:
    raw = (
        b"From: a@b.com\r\nSubject: x\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        b"Caf\xe9 cr\xe8me: imprimante en panne\r\n"
    )
    p = parse(raw)
    assert "Café crème" in p.text
    assert any("did not decode" in d for d in p.defects)


def test_unknown_charset_falls_back() -> None:
    raw = (
        b"From: a@b.com\r\nSubject: x\r\nContent-Type: text/plain; charset=x-klingon\r\n\r\n"
        b"server is down\r\n"
    )
    assert "server is down" in parse(raw).text


def test_html_only_becomes_text_without_script() -> None:
    raw = (
        b"From: a@b.com\r\nSubject: site\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><script>alert('x')</script><style>p{}</style></head>"
        b"<body><p>Our <b>website</b> is down</p></body></html>"
    )
    p = parse(raw)
    assert "website" in p.text and "is down" in p.text
    assert "alert" not in p.text and "<p>" not in p.text
    assert p.html is not None and "<script>" in p.html  # kept raw, never sent anywhere


def test_header_injection_is_flattened() -> None:
    raw = (
        b"From: =?utf-8?q?Eve=0D=0ABcc=3A_x=40evil.com?= <eve@evil.com>\r\n"
        b"Subject: =?utf-8?q?hello=0D=0ABcc=3A_victim=40example.com?=\r\n\r\nbody\r\n"
    )
    p = parse(raw)
    assert "\r" not in p.subject and "\n" not in p.subject
    assert "\n" not in p.from_name and "\r" not in p.from_name
    assert all("\n" not in v and "\r" not in v for _, v in p.headers)


def test_attachment_recorded_with_safe_name_and_hash() -> None:
    payload = b"%PDF-1.4 fake"
    import base64

    raw = (
        b"From: a@b.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
        b"--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
        b"--XX\r\nContent-Type: application/pdf\r\n"
        b'Content-Disposition: attachment; filename="../../etc/passwd.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.b64encode(payload) + b"\r\n--XX--\r\n"
    )
    p = parse(raw)
    assert p.text.strip() == "see attached"
    (att,) = p.attachments
    assert att.filename == "passwd.pdf"
    assert att.size == len(payload) and att.sha256 == hashlib.sha256(payload).hexdigest()


def test_missing_headers_and_message_id() -> None:
    p = parse(b"Subject: only a subject\r\n\r\nplease help\r\n")
    assert p.message_id is None and p.from_addr == "" and p.date is None
    assert "please help" in p.text


def test_broken_base64_does_not_raise() -> None:
    raw = (
        b"From: a@b.com\r\nSubject: x\r\nContent-Type: text/plain\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n!!!not*base64===\r\n"
    )
    p = parse(raw)
    assert isinstance(p.text, str)


def test_deeply_nested_multipart() -> None:
    depth = 60
    parts = [b"From: a@b.com\r\nSubject: deep\r\nMIME-Version: 1.0\r\n"]
    for i in range(depth):
        parts.append(f'Content-Type: multipart/mixed; boundary="b{i}"\r\n\r\n--b{i}\r\n'.encode())
    parts.append(b"Content-Type: text/plain\r\n\r\ninner text\r\n")
    for i in reversed(range(depth)):
        parts.append(f"--b{i}--\r\n".encode())
    p = parse(b"".join(parts))
    assert "inner text" in p.text


@pytest.mark.parametrize("raw", [b"", b"   \r\n  "])
def test_empty_is_a_parse_error(raw: bytes) -> None:
    with pytest.raises(ParseError):
        parse(raw)


def test_nul_bytes_removed() -> None:
    p = parse(b"From: a@b.com\r\nSubject: a\x00b\r\n\r\nhel\x00lo\r\n")
    assert "\x00" not in p.subject and "\x00" not in p.text


def test_clean_header() -> None:
    assert clean_header("a\r\nb\x07c", 10) == "a bc"
