from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from triage.ack import AckView, ack_subject, make_env, quote_subject, render_ack


def view(subject: str, priority: str = "urgent") -> AckView:
    t = datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
    return AckView(number="ITX-000042", request_type="email_problem", priority=priority,
                   priority_meaning="fulfilled within 24 hours", to_addr="dana@harborview.com",
                   message_id="ITX-000042.ack.7.abc@itx.net", in_reply_to="m1@harborview.com",
                   references=("m0@harborview.com", "m1@harborview.com"), subject=subject,
                   timezone="America/New_York", response_due=t, callback_due=t,
                   fulfil_due=t, milestones=(), date=t)


def test_links_and_addresses_from_the_client_never_reach_the_mail() -> None:
    subject = 'Click http://evil.example/x or www.bad.example <script>alert(1)</script> a@b.c'
    msg = render_ack(make_env(), view(subject), from_address="helpdesk@itx.net",
                     from_name="ITX Helpdesk", phone="800-600-7785")
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    for part in (msg["Subject"], text, html):
        assert "http://" not in part and "www.bad" not in part and "a@b.c" not in part
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["In-Reply-To"] == "<m1@harborview.com>"
    assert msg["References"] == "<m0@harborview.com> <m1@harborview.com>"
    assert "800-600-7785" in text and "ITX-000042" in text


def test_subject_is_one_line_and_capped() -> None:
    s = quote_subject("x" * 500 + "\r\nBcc: victim@example.com")
    assert len(s) <= 200 and "\n" not in s and "\r" not in s
    assert ack_subject("", "ITX-000001") == "[ITX-000001] We received your request"
    assert ack_subject("Re: help [ITX-000001]", "ITX-000001") == "Re: help [ITX-000001]"
    assert ack_subject("help", "ITX-000001") == "Re: help [ITX-000001]"


def test_normal_priority_has_no_phone_push_and_due_lines_in_order() -> None:
    msg = render_ack(make_env(), view("new mailbox", "normal"), from_address="helpdesk@itx.net",
                     from_name="ITX Helpdesk", phone="800-600-7785")
    text = msg.get_body(("plain",)).get_content()
    assert "Because this is urgent" not in text
    assert "by 10:00 AM EST on Monday, November 30" in text


def test_wire_bytes_say_what_the_email_message_says() -> None:
    """What the daemon sends (``render_ack_wire``) reads back as ``render_ack``'s message:
    the same headers and the same text, also for a non-ASCII subject (RFC 2047, quoted-
    printable bodies) and a long References chain (folded lines)."""
    import email
    import email.policy

    from triage.ack import render_ack_wire
    from triage.smtp import serialize

    refs = tuple(f"m{i}.some-long-message-id.1234567890@harborview.com" for i in range(20))
    for subject in ("new mailbox", "Drucker druckt nicht – Ärger im Büro " * 4, ""):
        v = view(subject)
        v = AckView(**{**v.__dict__, "references": refs})
        kw = dict(from_address="helpdesk@itx.net", from_name="ITX Helpdesk",
                  phone="800-600-7785")
        wire = render_ack_wire(make_env(), v, **kw)  # type: ignore[arg-type]
        assert wire is not None and wire.isascii()
        head, _, _ = wire.partition(b"\r\n\r\n")
        assert all(len(line) <= 78 for line in head.split(b"\r\n"))  # folded headers
        assert all(len(line) <= 998 for line in wire.split(b"\r\n"))
        got = email.message_from_bytes(wire, policy=email.policy.default)
        want = email.message_from_bytes(serialize(render_ack(make_env(), v, **kw)),  # type: ignore[arg-type]
                                        policy=email.policy.default)
        for h in ("From", "To", "Subject", "Date", "Message-ID", "In-Reply-To", "References",
                  "Auto-Submitted", "X-Auto-Response-Suppress", "X-ITX-Work-Order"):
            assert str(got[h]) == str(want[h]), h
        for kind in ("plain", "html"):
            text = got.get_body((kind,)).get_content().replace("\r\n", "\n")
            assert text == want.get_body((kind,)).get_content().replace("\r\n", "\n")
        assert not got.defects and not any(part.defects for part in got.walk())
    assert render_ack_wire(make_env(), AckView(**{**view("x").__dict__, "to_addr": "jürgen@x.de"}),
                           **kw) is None  # type: ignore[arg-type]  # SMTPUTF8: render_ack's job


@settings(max_examples=300, deadline=None)
@given(st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=300))
def test_a_non_ascii_subject_header_decodes_to_the_subject_and_folds(subject: str) -> None:
    from triage.ack import subject_header

    assume(not subject.isascii())  # ASCII subjects go through email.header as before
    line = subject_header(subject)
    assert line.isascii()
    assert all(len(part) <= 78 for part in line.split("\r\n"))
    msg = email.message_from_bytes(line.encode() + b"\r\n\r\n", policy=email.policy.default)
    assert str(msg["Subject"]) == subject
