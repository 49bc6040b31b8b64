"""Staff actions and the queue on real SQLite and PostgreSQL: due dates recomputed on
reclassify, pauses that stop the clocks, replies through the outbox that stop the response
clock, the SLA marks the queue filters on, and an audit event for every action."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from classifiers.types import Decision
from tests.deskenv import events, get, open_wo
from tests.factories import FRI_10, MBOX
from triage.desk import logins, users
from triage.desk.actions import ActionError, Desk, DeskConfig, NotFound
from triage.desk.queue import QueueFilter, format_remaining, queue_page, work_order_detail
from triage.messages import RawMessage
from triage.parse import parse
from triage.slamarks import AT_RISK, BREACHED, ON_TRACK, PAUSED, sla_state
from triage.storage.models import Correction, Outbox, User
from triage.workorders import Ingest


def test_new_work_order_carries_queue_marks(env) -> None:
    store, _, sessions, _, _ = env
    n = open_wo(store, 1, "website_down", "urgent")
    wo = get(sessions, n)
    # The nearest due is the earliest of the clocks; at-risk comes before it.
    dues = [t for t in (wo.callback_due, wo.response_due, wo.fulfil_due) if t]
    assert wo.next_due == min(dues)
    assert wo.at_risk_at is not None and FRI_10 < wo.at_risk_at < wo.next_due
    assert sla_state(wo, FRI_10) == ON_TRACK
    assert sla_state(wo, wo.at_risk_at) == AT_RISK
    assert sla_state(wo, wo.next_due) == BREACHED


def test_reclassify_recomputes_due_dates_and_keeps_a_correction(env) -> None:
    store, desk, sessions, policy, clock = env
    n = open_wo(store, 1, "new_account", "normal")
    before = get(sessions, n)
    clock.t = FRI_10 + timedelta(hours=1)
    desk.reclassify(n, "bob", "server_down", "urgent")
    after = get(sessions, n)
    expected = policy.due("server_down", "urgent", after.contract, before.received_at)
    assert (after.request_type, after.priority) == ("server_down", "urgent")
    assert after.fulfil_due == expected.fulfil_due != before.fulfil_due
    assert after.callback_due == expected.callback_due
    assert after.next_due is not None and after.next_due < before.next_due  # type: ignore[operator]
    with sessions() as s:
        c = s.scalar(select(Correction))
        assert c is not None
        assert (c.old_type, c.new_type, c.old_priority, c.new_priority, c.actor) == (
            "new_account", "server_down", "normal", "urgent", "bob")
    ev = events(sessions, n)[-1]
    assert (ev.actor, ev.action, ev.detail["was_type"]) == ("bob", "reclassified", "new_account")
    assert ev.at == clock.t


def test_confirming_clears_review_without_a_correction(env) -> None:
    store, desk, sessions, _, _ = env
    n = open_wo(store, 1, conf=0.3)
    assert get(sessions, n).needs_review
    wo = get(sessions, n)
    desk.reclassify(n, "bob", wo.request_type, wo.priority)
    assert not get(sessions, n).needs_review
    with sessions() as s:
        assert s.scalar(select(Correction)) is None
    assert events(sessions, n)[-1].action == "confirmed"


def test_bad_values_are_refused(env) -> None:
    store, desk, _, _, _ = env
    n = open_wo(store, 1)
    with pytest.raises(ActionError):
        desk.reclassify(n, "bob", "no_such_type", "normal")
    with pytest.raises(ActionError):
        desk.set_status(n, "bob", "closed-ish")
    with pytest.raises(ActionError):
        desk.assign(n, "bob", "nobody")
    with pytest.raises(ActionError):
        desk.note(n, "bob", "   ")
    with pytest.raises(NotFound):
        desk.note("ITX-999999", "bob", "hello")
    with pytest.raises(ActionError):
        desk.reopen(n, "bob")  # not resolved


def test_waiting_on_client_pauses_the_clocks(env) -> None:
    store, desk, sessions, policy, clock = env
    n = open_wo(store, 1, "email_problem", "normal")
    first_due = get(sessions, n).next_due
    assert first_due is not None
    assert first_due > FRI_10 + timedelta(minutes=30)
    clock.t = FRI_10 + timedelta(minutes=30)
    desk.set_status(n, "bob", "waiting_client")
    wo = get(sessions, n)
    assert wo.next_due is None and sla_state(wo, clock.t) == PAUSED
    assert wo.pauses[0][1] is None
    # Two hours later (10:30 -> 12:30 New York, all open time) the client answers.
    clock.t = FRI_10 + timedelta(minutes=150)
    desk.set_status(n, "bob", "open")
    wo = get(sessions, n)
    assert wo.pauses[0][1] is not None
    assert wo.next_due is not None
    moved = wo.next_due - first_due
    # The due moves by exactly the paused open time (2 h) in business time.
    cal = policy.calendar(wo.contract)
    assert cal.business_time_between(first_due, wo.next_due) == timedelta(hours=2), moved
    kinds = [(e.action, e.detail.get("status")) for e in events(sessions, n)]
    assert ("status", "waiting_client") in kinds and ("status", "open") in kinds


def test_a_client_reply_ends_the_wait(env) -> None:
    store, desk, sessions, _, clock = env
    n = open_wo(store, 1)
    desk.set_status(n, "bob", "waiting_client")
    clock.t = FRI_10 + timedelta(minutes=30)
    data = (f"From: dana@harborview.com\r\nTo: helpdesk@itx.net\r\nSubject: Re: [{n}] help\r\n"
            "Message-ID: <r1@harborview.com>\r\nIn-Reply-To: <m1@harborview.com>\r\n\r\n"
            "Here is the screenshot you asked for\r\n").encode()
    raw = RawMessage(MBOX, 7, "2", len(data), data, internal_date=clock.t)
    d = Decision(label="email_problem", confidence=0.9, priority="normal", needs_review=False,
                 model_version="test")
    out = store.store_batch([Ingest(raw=raw, parsed=parse(data), decision=d)])
    assert out[0].disposition == "reply"
    wo = get(sessions, n)
    assert wo.status == "open" and wo.pauses[0][1] is not None and wo.next_due is not None


def test_reply_goes_through_the_outbox_threaded_and_stops_the_response_clock(env) -> None:
    store, desk, sessions, _, clock = env
    n = open_wo(store, 1)
    assert get(sessions, n).first_response_at is None
    clock.t = FRI_10 + timedelta(minutes=20)
    desk.reply(n, "bob", "We are looking at it.\r\nBob", agent_name="Bob B")
    wo = get(sessions, n)
    assert wo.first_response_at == clock.t and wo.status == "open"
    with sessions() as s:
        row = s.scalar(select(Outbox).where(Outbox.kind == "reply"))
        assert row is not None
        assert row.to_addr == "dana@harborview.com" and row.status == "pending"
        assert row.context["in_reply_to"] == "m1@harborview.com"
        assert row.context["body"] == "We are looking at it.\nBob"
        assert row.message_id.startswith(f"{n}.reply.") and row.message_id.endswith("@itx.net")
    # A second reply does not move the first response.
    clock.t += timedelta(hours=1)
    desk.reply(n, "bob", "Fixed.", wait_for_client=True)
    wo = get(sessions, n)
    assert wo.first_response_at == FRI_10 + timedelta(minutes=20)
    assert wo.status == "waiting_client"
    assert [e.detail.get("first_response") for e in events(sessions, n)
            if e.action == "replied"] == [True, False]


def test_resolve_reopen_assign_promise_note_are_audited(env) -> None:
    store, desk, sessions, _, clock = env
    n = open_wo(store, 1)
    desk.assign(n, "bob", "bob")
    desk.promise(n, "bob", datetime(2026, 12, 1, 17, 0, tzinfo=UTC))
    desk.note(n, "bob", "called the client, will go on site")
    desk.resolve(n, "bob")
    wo = get(sessions, n)
    assert wo.status == "resolved" and wo.resolved_at == clock.t and wo.next_due is None
    desk.reopen(n, "bob")
    wo = get(sessions, n)
    assert wo.status == "open" and wo.resolved_at is None and wo.next_due is not None
    assert wo.assignee_id is not None and wo.promised_at == datetime(2026, 12, 1, 17, 0,
                                                                     tzinfo=UTC)
    actions = [e.action for e in events(sessions, n) if e.actor == "bob"]
    assert actions == ["assigned", "promised", "note", "resolved", "reopened"]


def test_queue_filters_sorts_and_counts(env) -> None:
    store, desk, sessions, policy, clock = env
    a = open_wo(store, 1, "website_down", "urgent")     # earliest dues
    b = open_wo(store, 2, "new_account", "normal", conf=0.3)  # needs review
    c = open_wo(store, 3, "printer_setup", "high")
    desk.resolve(c, "bob")
    desk.assign(b, "bob", "bob")
    later = get(sessions, a).next_due
    assert later is not None
    with sessions() as s:
        page = queue_page(s, policy, QueueFilter(), clock.t)
        assert [r.wo.number for r in page.rows] == [a, b]  # nearest due first; c resolved
        assert page.counts.active == 2 and page.counts.needs_review == 1
        assert page.counts.by_type == {"new_account": 1, "website_down": 1}
        assert all(r.clock is not None and r.clock.state.remaining > timedelta(0)
                   for r in page.rows)
        assert [r.wo.number for r in queue_page(
            s, policy, QueueFilter(needs_review=True), clock.t).rows] == [b]
        assert [r.wo.number for r in queue_page(
            s, policy, QueueFilter(assignee="bob"), clock.t).rows] == [b]
        assert [r.wo.number for r in queue_page(
            s, policy, QueueFilter(assignee="none"), clock.t).rows] == [a]
        assert [r.wo.number for r in queue_page(
            s, policy, QueueFilter(status="resolved"), clock.t).rows] == [c]
        assert [r.wo.number for r in queue_page(
            s, policy, QueueFilter(q=a), clock.t).rows] == [a]
        # Time passes: the urgent one breaches first.
        breached = queue_page(s, policy, QueueFilter(sla="breached"), later)
        assert [r.wo.number for r in breached.rows] == [a]
        assert breached.rows[0].clock is not None
        assert breached.rows[0].clock.state.remaining <= timedelta(0)
        on_track = queue_page(s, policy, QueueFilter(sla="on_track"), clock.t)
        assert {r.wo.number for r in on_track.rows} == {a, b}
        paged = queue_page(s, policy, QueueFilter(page=2, page_size=1), clock.t)
        assert (paged.total, paged.pages, [r.wo.number for r in paged.rows]) == (2, 2, [b])


def test_detail_merges_thread_and_events(env) -> None:
    store, desk, sessions, policy, clock = env
    n = open_wo(store, 1)
    desk.note(n, "bob", "internal")
    desk.reply(n, "bob", "public")
    with sessions() as s:
        d = work_order_detail(s, policy, n, clock.t)
        assert d is not None
        kinds = [t.kind for t in d.thread]
        assert kinds[0] == "in" and "note" in kinds and "reply" in kinds and "ack" in kinds
        assert d.timezone == "America/New_York"
        assert "callback" in {c.target for c in d.clocks}
        assert "response" not in {c.target for c in d.clocks}  # answered
        assert work_order_detail(s, policy, "ITX-999999", clock.t) is None


def test_format_remaining() -> None:
    assert format_remaining(timedelta(hours=3, minutes=20)) == "3h 20m left"
    assert format_remaining(timedelta(minutes=-65)) == "overdue 1h 05m"
    assert format_remaining(timedelta(days=2, hours=1)) == "2d 1h left"
    assert format_remaining(timedelta(minutes=7)) == "7m left"


# ---- users ------------------------------------------------------------------------------------
def test_progressive_delay_per_name_and_address(env) -> None:
    _, _, sessions, _, clock = env

    def attempt(name: str = "bob", address: str = "198.51.100.1") -> logins.Attempt:
        with sessions.begin() as s:
            return logins.reserve(s, name, address, clock.t)

    results = [attempt() for _ in range(logins.FREE_ATTEMPTS)]
    assert all(r.allowed for r in results)
    assert [r.delay_started for r in results] == [False] * (logins.FREE_ATTEMPTS - 1) + [True]
    refused = attempt()
    assert not refused.allowed and refused.retry_after == logins.FIRST_DELAY
    assert not attempt().allowed  # a refused attempt neither counts nor extends the delay
    assert attempt(address="198.51.100.2").allowed  # another address: its own count
    clock.t += logins.FIRST_DELAY
    assert attempt().allowed  # one more, then twice the wait
    again = attempt()
    assert not again.allowed and again.retry_after == 2 * logins.FIRST_DELAY
    with sessions.begin() as s:  # the right password clears this address's count
        logins.succeeded(s, "bob", "198.51.100.1", clock.t)
    assert attempt().allowed
    assert logins.delay_after(100) == logins.MAX_DELAY


def test_a_spread_attack_meets_the_per_name_count_but_known_addresses_pass(env) -> None:
    _, _, sessions, _, clock = env
    with sessions.begin() as s:
        logins.succeeded(s, "bob", "203.0.113.9", clock.t)  # Bob's desk
    for i in range(logins.NAME_FREE_ATTEMPTS):
        with sessions.begin() as s:
            assert logins.reserve(s, "bob", f"10.0.{i}.1", clock.t).allowed
    with sessions.begin() as s:
        assert not logins.reserve(s, "bob", "10.9.9.9", clock.t).allowed  # a fresh address
        assert logins.reserve(s, "bob", "203.0.113.9", clock.t).allowed  # Bob's own desk


def test_unknown_user_and_wrong_password_read_the_same(env) -> None:
    _, _, sessions, _, clock = env
    with sessions() as s:
        unknown, known = users.credentials_for(s, "nobody"), users.credentials_for(s, "bob")
    assert unknown.user_id is None and known.user_id is not None
    # The unknown name is checked against a real argon2 hash: the same cost as a real one.
    assert unknown.password_hash.startswith("$argon2id$")
    assert not users.verify_password(unknown.password_hash, "whatever")
    assert users.check_password(sessions, "nobody", "whatever", clock.t) is None
    assert users.check_password(sessions, "bob", "whatever", clock.t) is None
    assert users.check_password(sessions, "bob", "long enough password", clock.t) is not None
    with sessions() as s:
        assert s.scalar(select(User.last_login_at).where(User.name == "bob")) == clock.t


def test_sessions_expire_and_end(env) -> None:
    _, _, sessions, _, clock = env
    with sessions.begin() as s:
        user = s.scalar(select(User).where(User.name == "bob"))
        assert user is not None
        token, row = users.create_session(s, user, clock.t, timedelta(hours=1))
        assert row.token_hash != token  # only the hash is stored
    with sessions() as s:
        assert users.session_for(s, token, clock.t) is not None
        assert users.session_for(s, token, clock.t + timedelta(hours=2)) is None
        assert users.session_for(s, token + "x", clock.t) is None
    with sessions.begin() as s:
        users.end_session(s, token)
    with sessions() as s:
        assert users.session_for(s, token, clock.t) is None


def test_api_tokens(env) -> None:
    _, _, sessions, _, _ = env
    with sessions.begin() as s:
        user = s.scalar(select(User).where(User.name == "bob"))
        assert user is not None
        token = users.issue_api_token(s, user)
    with sessions() as s:
        found = users.user_for_api_token(s, token)
        assert found is not None and found.name == "bob"
        assert users.user_for_api_token(s, token[:-1]) is None
        assert users.user_for_api_token(s, "not-a-token") is None


def test_user_rules(env) -> None:
    _, _, sessions, _, _ = env
    with sessions.begin() as s:
        with pytest.raises(users.UserError):
            users.add_user(s, "Bad Name", "long enough password")
        with pytest.raises(users.UserError):
            users.add_user(s, "carol", "short")
        with pytest.raises(users.UserError):
            users.add_user(s, "bob", "long enough password")


def test_first_reply_reports_the_business_hours_waited(env) -> None:
    store, _, sessions, policy, clock = env
    seen: list[float] = []
    desk = Desk(sessions, policy, DeskConfig("helpdesk@itx.net"), clock,
                on_first_response=seen.append)
    n = open_wo(store, 1)  # Friday 10:00 New York
    clock.t = FRI_10 + timedelta(hours=12)  # 22:00: closed since 20:00, so 10 business hours
    desk.reply(n, "bob", "first")
    desk.reply(n, "bob", "second")
    assert seen == [pytest.approx(10.0)]


def test_logging_the_call_back_stops_that_clock(env) -> None:
    store, desk, sessions, _, clock = env
    n = open_wo(store, 1, "email_problem", "urgent")  # a call back within 1 business hour
    wo = get(sessions, n)
    assert wo.callback_due is not None and wo.next_due == wo.callback_due
    clock.t = FRI_10 + timedelta(minutes=40)
    desk.called_back(n, "bob", "talked Dana through a restart")
    wo = get(sessions, n)
    assert wo.called_back_at == clock.t and wo.status == "open"
    assert wo.next_due is not None and wo.next_due > wo.callback_due  # the next clock now
    assert sla_state(wo, FRI_10 + timedelta(hours=2)) == ON_TRACK  # no callback breach
    ev = events(sessions, n)[-1]
    assert (ev.action, ev.detail["text"]) == ("called_back", "talked Dana through a restart")
    with pytest.raises(ActionError, match="already"):
        desk.called_back(n, "bob")
    other = open_wo(store, 2, "new_account", "normal")
    with pytest.raises(ActionError, match="no call-back"):
        desk.called_back(other, "bob")
