from __future__ import annotations

import email
import email.policy
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from tests.factories import ack_view
from triage.ack import AckView, ack_subject, greeting_name, make_env, quote_subject, render_ack
from triage.sla import SlaPolicy, load_policy

NY = ZoneInfo("America/New_York")


def test_links_and_addresses_from_the_client_never_reach_the_mail() -> None:
    subject = 'Click http://evil.example/x or www.bad.example <script>alert(1)</script> a@b.c'
    msg = render_ack(make_env(), ack_view(subject), from_address="helpdesk@itx.net",
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
    msg = render_ack(make_env(), ack_view("new mailbox", "normal"), from_address="helpdesk@itx.net",
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
        v = ack_view(subject)
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
    assert render_ack_wire(make_env(),
                           AckView(**{**ack_view("x").__dict__, "to_addr": "jürgen@x.de"}),
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


# -- wording: what the client reads, from the shipped policy's real due dates ----------------


@pytest.fixture(scope="module")
def policy() -> SlaPolicy:
    return load_policy()


def policy_view(policy: SlaPolicy, request_type: str, received: datetime,
                requester_name: str = "") -> AckView:
    """The view the outbox builds for a new work order at the type's own priority."""
    priority = policy.default_priority(request_type)
    due = policy.due(request_type, None, "standard", received)
    return AckView(number="ITX-000042", request_type=request_type, priority=priority,
                   priority_meaning=policy.priority_meaning(priority),
                   to_addr="dana@harborviewdental.com", message_id="a.1@itx.net",
                   in_reply_to=None, references=(), subject="help",
                   timezone="America/New_York", response_due=due.response_due,
                   callback_due=due.callback_due, fulfil_due=due.fulfil_due,
                   milestones=due.milestones, date=received, requester_name=requester_name,
                   fulfil_within=policy.fulfil_in_words(request_type, priority))


def bodies(v: AckView) -> tuple[str, str]:
    msg = render_ack(make_env(), v, from_address="helpdesk@itx.net", from_name="ITX Helpdesk",
                     phone="800-600-7785")
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


MON_8 = datetime(2026, 11, 30, 8, 0, tzinfo=NY)  # Monday, opening time


def test_urgent_website_down_promises_its_own_four_hours_once(policy: SlaPolicy) -> None:
    text, html = bodies(policy_view(policy, "website_down", MON_8))
    for body in (text, html):
        # The type's own target (restore in 4 h), said once; never urgent's generic 24 h.
        assert "24 hours" not in body and "fulfilled" not in body
        assert body.count("Our target is") == 1
        assert ("Our target is to have your site restored by 12:00 PM EST on Monday, "
                "November 30 (within 4 hours).") in " ".join(body.split())
    assert ("Priority: Urgent - an outage, a data integrity error or a severe performance "
            "problem.\n") in text


def test_an_urgent_type_promises_the_priority_target_when_it_has_none_of_its_own(
        policy: SlaPolicy) -> None:
    text, _ = bodies(policy_view(policy, "password_reset", MON_8))
    assert ("Our target is to have this resolved by 8:00 AM EST on Tuesday, December 1 "
            "(within 24 hours).") in text
    assert text.count("Our target is") == 1


def test_normal_priority_says_what_happens_and_by_when(policy: SlaPolicy) -> None:
    text, html = bodies(policy_view(policy, "new_account", MON_8))
    for body in (text, html):
        assert "date given for this kind of request" not in body
        assert body.count("Our target is") == 1
    assert "Priority: Normal - planned work, scheduled for you.\n" in text
    assert ("Our target is to have this completed by 8:00 PM EST on Tuesday, December 1 "
            "(the end of the next business day).") in text
    other, _ = bodies(policy_view(policy, "other", MON_8))
    assert other.count("We will agree a date for the work with you.") == 1
    assert "Our target is" not in other


def test_every_type_states_at_most_one_fulfil_target(policy: SlaPolicy) -> None:
    for request_type in policy.types:
        v = policy_view(policy, request_type, MON_8 + timedelta(hours=3))
        text, _ = bodies(v)
        priority_line = next(x for x in text.splitlines() if x.startswith("Priority:"))
        assert not any(ch.isdigit() for ch in priority_line), request_type
        assert text.count("Our target is") == (1 if v.fulfil_due and not v.milestones else 0)
        if v.fulfil_within and not v.milestones:
            assert f"({v.fulfil_within})." in text, request_type


def test_the_client_is_greeted_by_name_when_known(policy: SlaPolicy) -> None:
    text, html = bodies(policy_view(policy, "email_problem", MON_8, "Dana Whitfield"))
    assert text.startswith("Hello Dana,\n") and "<p>Hello Dana,</p>" in html
    text, html = bodies(policy_view(policy, "email_problem", MON_8, ""))
    assert text.startswith("Hello,\n") and "<p>Hello,</p>" in html


@pytest.mark.parametrize(("display_name", "first"), [
    ("Dana Whitfield", "Dana"),
    ("Whitfield, Dana", "Dana"),
    ('"DANA WHITFIELD"', "Dana"),
    ("jean-luc picard", "Jean-Luc"),
    ("O'Brien", "O'Brien"),
    ("Zoë Åberg", "Zoë"),
    ("", ""),
    ("Helpdesk", ""),
    ("Front Office", "Front"),
    ("Dr. Dana Whitfield", ""),
    ("dana@harborviewdental.com", ""),
    ("http://evil.example/x", ""),
    ("evil.example", ""),
    ("<script>alert(1)</script>", ""),
    ("R2D2", ""),
    ("x" * 31, ""),
])
def test_greeting_name_lets_only_a_plain_first_name_through(display_name: str,
                                                            first: str) -> None:
    assert greeting_name(display_name) == first
