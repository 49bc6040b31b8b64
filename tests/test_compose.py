"""Composing replies, on real SQLite and PostgreSQL: canned replies (saved, suggested per
request type, rendered in a closed sandbox over the work order's variables), files on a
reply (limits, stored like incoming attachments, listed on the thread, sent as MIME parts
through real SMTP), and a reply that sets the status in the same action under the
collision guard."""

from __future__ import annotations

import email
import email.policy
import hashlib
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.deskenv import events, get, open_wo
from tests.factories import FRI_10, OUTLOOK_REQUEST, maildir_components
from triage.ack import make_env
from triage.desk.actions import ActionError, Conflict, NotFound
from triage.desk.canned import CannedError, CannedReplies, check_template, render_template
from triage.desk.mail import render_reply
from triage.desk.queue import attachment_for, work_order_detail
from triage.desk.uploads import Upload, UploadLimits, UploadRefused, check, safe_filename, store
from triage.storage.models import AttachmentRow, Event, Outbox, WorkOrder

GREETING = ("Hello {{ client_name }},\n\nwe have {{ number }} ({{ request_type }}) and will "
            "answer by {{ response_due }}.{% if callback_due %} We call back by "
            "{{ callback_due }}.{% endif %}\n\n{{ agent }}")


def canned_of(env_) -> CannedReplies:  # type: ignore[no-untyped-def]
    _, _, sessions, policy, clock = env_
    return CannedReplies(sessions, policy, clock)


# ---- canned replies ---------------------------------------------------------------------

def test_canned_replies_are_saved_audited_and_suggested_by_type(env) -> None:
    _, _, sessions, _, _ = env
    canned = canned_of(env)
    a = canned.create("bob", "Zebra general", "Thanks, {{ client_name }}.")
    b = canned.create("bob", "Password steps", "Reset it at https://reset.itx.net",
                      ["password_reset", "password_reset"])
    c = canned.create("ann", "Another", "Looking at it.", ["email_problem"])
    with sessions() as s:
        names = [x.name for x in canned.listing(s, "password_reset")]
        assert names == ["Password steps", "Another", "Zebra general"]
        assert next(x.name for x in canned.listing(s, "email_problem")) == "Another"
        assert canned.get(s, b.id).request_types == ("password_reset",)
    canned.update(a.id, "ann", "General thanks", "Thank you {{ client_name }}.",
                  ["other"])
    canned.delete(c.id, "bob")
    with sessions() as s:
        assert [x.name for x in canned.listing(s)] == ["General thanks", "Password steps"]
        assert canned.get(s, a.id).updated_by == "ann"
        with pytest.raises(NotFound):
            canned.get(s, c.id)
        audit = [(e.actor, e.action, e.detail.get("name")) for e in
                 s.scalars(select(Event).where(Event.action.like("canned_%"))
                           .order_by(Event.id))]
    assert audit == [("bob", "canned_created", "Zebra general"),
                     ("bob", "canned_created", "Password steps"),
                     ("ann", "canned_created", "Another"),
                     ("ann", "canned_changed", "General thanks"),
                     ("bob", "canned_deleted", "Another")]


def test_canned_reply_refusals_say_why(env) -> None:
    canned = canned_of(env)
    canned.create("bob", "Hello", "Hi {{ client_name }}")
    with pytest.raises(CannedError, match="exists already"):
        canned.create("bob", " Hello ", "Hi again")
    with pytest.raises(CannedError, match="unknown request type"):
        canned.create("bob", "X", "text", ["no_such_type"])
    with pytest.raises(CannedError, match="line 2: an attribute is not allowed"):
        canned.create("bob", "Y", "Hi\n{{ client_name.__class__ }}")
    with pytest.raises(CannedError, match="needs a name"):
        canned.create("bob", "  ", "text")
    with pytest.raises(NotFound):
        canned.delete(999_999, "bob")


def test_canned_reply_renders_the_work_orders_values_in_the_clients_zone(env) -> None:
    store_, _, sessions, _, _ = env
    number = open_wo(store_, 1, "password_reset", "urgent", subject="locked out")
    canned = canned_of(env)
    t = canned.create("bob", "Greeting", GREETING)
    with sessions() as s:
        text = canned.render(s, t.id, number, "Bob B")
        wo = s.scalar(select(WorkOrder).where(WorkOrder.number == number))
        assert wo is not None and wo.callback_due is not None
        # Friday 10:00 New York; the call back is one business hour later, in EST.
        assert text.startswith(f"Hello Dana,\n\nwe have {number} (password reset) and will "
                               "answer by ")
        assert "We call back by Fri 27 Nov 2026 11:00 EST." in text
        assert text.endswith("\n\nBob B")
        with pytest.raises(NotFound):
            canned.render(s, t.id, "ITX-999999", "Bob B")


BAD_TEMPLATES = [
    ("{{ client_name.__class__.__mro__ }}", "an attribute is not allowed"),
    ("{{ client_name['x'] }}", "an item is not allowed"),
    ("{{ client_name.upper() }}", "not allowed"),
    ("{{ range(100000) }}", "a call is not allowed"),
    ("{% for c in subject %}{{ c }}{% endfor %}", "a loop is not allowed"),
    ("{% macro m(x) %}{{ m(x ~ x) }}{% endmacro %}", "a macro is not allowed"),
    ("{% set x = 1 %}", "an assignment is not allowed"),
    ("{% include 'web/base.html.j2' %}", "an include is not allowed"),
    ("{{ subject * 1000000 }}", "arithmetic is not allowed"),
    ("{{ subject|replace('a', 'aaaa') }}", "filter 'replace' is not allowed"),
    ("{{ settings }}", "unknown variable 'settings'"),
    ("{{ cycler }}", "unknown variable 'cycler'"),
    ("{{ subject is callable }}", "test 'callable' is not allowed"),
    ("{{ subject", "template error on line 1"),
]


@pytest.mark.parametrize(("body", "why"), BAD_TEMPLATES)
def test_a_template_reaches_nothing_beyond_its_variables(body: str, why: str) -> None:
    with pytest.raises(CannedError, match=why.replace("(", r"\(")):
        check_template(body)
    with pytest.raises(CannedError):
        render_template(body, {"subject": "s", "client_name": "c"})


def test_a_bad_filter_argument_is_a_template_error_not_a_crash() -> None:
    with pytest.raises(CannedError, match="template error"):
        render_template("{{ subject|truncate('x') }}", {"subject": "abc"})
    assert render_template("{{ subject|upper|truncate(5, true, '...', 0) }}"
                           "{{ fulfil_due|default('-', true) }}",
                           {"subject": "abcdefgh", "fulfil_due": ""}) == "AB...-"


# ---- files on a reply -------------------------------------------------------------------

def test_upload_limits_refuse_with_a_clear_reason() -> None:
    limits = UploadLimits(max_files=2, max_file_bytes=10, max_total_bytes=15)
    check([Upload("a", "text/plain", b"x" * 10)], limits)
    with pytest.raises(UploadRefused, match="3 files: a reply takes at most 2 files") as e:
        check([Upload("a", "text/plain", b"x")] * 3, limits)
    assert e.value.status == 422
    with pytest.raises(UploadRefused, match=r"'big\.bin' is larger than") as e:
        check([Upload("big.bin", "text/plain", b"x" * 11)], limits)
    assert e.value.status == 413
    with pytest.raises(UploadRefused, match="the files come to"):
        check([Upload("a", "", b"x" * 8), Upload("b", "", b"x" * 8)], limits)
    assert safe_filename("../../etc/passwd", 1) == "passwd"
    assert safe_filename("..", 2) == "attachment-2"
    assert safe_filename("a\r\nBcc: x@y.z", 1) == "a Bcc: x@y.z"


def test_a_reply_with_files_and_resolve_is_one_audited_action(env, tmp_path: Path) -> None:
    store_, desk, sessions, policy, _ = env
    number = open_wo(store_, 1)
    version = get(sessions, number).version
    files = store([Upload("log.txt", "text/plain; charset=utf-8", b"line 1\n"),
                   Upload("shot.png", "image/png", b"\x89PNG fake")],
                  tmp_path / "att", UploadLimits())
    desk.reply(number, "bob", "Fixed; the log is attached.", then="resolved", files=files,
               agent_name="Bob B", version=version)
    wo = get(sessions, number)
    assert wo.status == "resolved" and wo.resolved_at is not None
    assert wo.version == version + 1  # one step for the reply and the status change
    evs = [e for e in events(sessions, number) if e.wo_version == wo.version]
    assert [e.action for e in evs] == ["replied", "resolved"]
    assert evs[0].detail["attachments"] == 2
    with sessions() as s:
        row = s.scalar(select(Outbox).where(Outbox.kind == "reply"))
        assert row is not None
        assert [a["filename"] for a in row.context["attachments"]] == ["log.txt", "shot.png"]
        rows = list(s.scalars(select(AttachmentRow).where(AttachmentRow.outbox_id == row.id)
                              .order_by(AttachmentRow.id)))
        assert [(r.filename, r.content_type, r.size, r.message_pk) for r in rows] == [
            ("log.txt", "text/plain", 7, None), ("shot.png", "image/png", 9, None)]
        assert Path(rows[0].path).read_bytes() == b"line 1\n"
        assert rows[0].sha256 == hashlib.sha256(b"line 1\n").hexdigest()
        # Listed on the thread, and downloadable through the work order only.
        d = work_order_detail(s, policy, number, FRI_10)
        assert d is not None
        reply = next(i.outbox for i in d.thread if i.kind == "reply")
        assert reply is not None and [a.filename for a in reply.attachments] == [
            "log.txt", "shot.png"]
        assert attachment_for(s, number, rows[0].id) is not None
        assert attachment_for(s, "ITX-999999", rows[0].id) is None


def test_a_stale_page_sends_nothing_and_stores_no_file_rows(env, tmp_path: Path) -> None:
    store_, desk, sessions, _, _ = env
    number = open_wo(store_, 1)
    seen = get(sessions, number).version
    desk.note(number, "ann", "looking", version=seen)
    files = store([Upload("a.txt", "text/plain", b"a")], tmp_path / "att", UploadLimits())
    with pytest.raises(Conflict) as e:
        desk.reply(number, "bob", "done", then="waiting_client", files=files, version=seen)
    assert [c.action for c in e.value.changes] == ["note"]
    with sessions() as s:
        assert s.scalar(select(Outbox).where(Outbox.kind == "reply")) is None
        assert s.scalar(select(AttachmentRow).where(AttachmentRow.outbox_id.is_not(None))) \
            is None
    assert get(sessions, number).status == "new"
    with pytest.raises(ActionError, match="cannot set the status"):
        desk.reply(number, "bob", "done", then="new")
    desk.reply(number, "bob", "please try again", then="waiting_client")
    wo = get(sessions, number)
    assert wo.status == "waiting_client" and wo.next_due is None  # paused


def test_a_reply_whose_file_is_gone_is_not_rendered_without_it(tmp_path: Path) -> None:
    ctx = {"number": "ITX-000001", "subject": "s", "body": "see attached", "agent": "Bob",
           "at": FRI_10.isoformat(),
           "attachments": [{"filename": "a.txt", "content_type": "text/plain", "size": 1,
                            "sha256": hashlib.sha256(b"a").hexdigest()}]}
    with pytest.raises(FileNotFoundError):  # the sweep dead-letters it: "cannot render"
        render_reply(make_env(), ctx, "m@itx.net", "dana@harborview.com",
                     from_address="helpdesk@itx.net", from_name="ITX", attachments_dir=tmp_path)
    store([Upload("a.txt", "text/plain", b"a")], tmp_path, UploadLimits())
    msg = render_reply(make_env(), ctx, "m@itx.net", "dana@harborview.com",
                       from_address="helpdesk@itx.net", from_name="ITX",
                       attachments_dir=tmp_path)
    assert [p.get_filename() for p in msg.iter_attachments()] == ["a.txt"]


# ---- through real SMTP ------------------------------------------------------------------

async def test_the_client_receives_the_files_through_real_smtp(tmp_path: Path,
                                                               smtp_sink) -> None:
    c, settings, _ = maildir_components(tmp_path, OUTLOOK_REQUEST, smtp_sink.url)
    runner = c.runner
    pdf = b"%PDF-1.4 steps\x00\xff"
    async with c.transport:
        await runner.mailbox.connect()
        assert await runner.process_waiting() == 1
        with c.reads() as s:
            number = s.scalar(select(WorkOrder.number))
        assert number
        files = store([Upload("Réglages Outlook.pdf", "application/pdf", pdf)],
                      settings.attachments_dir, UploadLimits())
        c.desk.reply(number, "bob", "The steps are attached.", then="waiting_client",
                     files=files, agent_name="Bob B")
        sent, failed = await runner.sender.drain()
        assert (sent, failed) == (2, 0)
        await runner.mailbox.close()
    c.close()
    mails = [email.message_from_bytes(r.data, policy=email.policy.default)
             for r in smtp_sink.received]
    reply = next(m for m in mails if "Auto-Submitted" not in m)
    assert reply["To"] == "dana@harborview.com"
    body = reply.get_body(("plain",))
    assert body is not None and "The steps are attached." in body.get_content()
    parts = list(reply.iter_attachments())
    assert [(p.get_filename(), p.get_content_type()) for p in parts] == [
        ("Réglages Outlook.pdf", "application/pdf")]
    assert parts[0].get_content() == pdf
