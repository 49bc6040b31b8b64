"""The technician's pages on real SQLite and PostgreSQL: the thread in the order things
happened (an answer after what it answers, whatever the arrival clocks say), "client
replied" in the queue, the client's name, and the acknowledgment's words as sent."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from classifiers.types import Decision
from tests.deskenv import get, open_wo, store_mail
from tests.factories import FRI_10
from triage.clients import set_client
from triage.desk.queue import QueueFilter, queue_page, work_order_detail
from triage.desk.sent import SentAcks
from triage.desk.thread import Entry, client_has_last_word, in_order
from triage.sla import SlaPolicy
from triage.storage.models import Outbox, WorkOrder
from triage.workorders import WorkOrderStore


@pytest.fixture
def world(env):
    """tests/deskenv.py's env: store, desk, sessions, policy, clock."""
    return env


DECISION = Decision(label="email_problem", confidence=0.9, priority="normal",
                    needs_review=False, model_version="test")


def client_mail(store: WorkOrderStore, uid: int, subject: str, *, arrived_before: timedelta,
                in_reply_to: str | None = None, references: str | None = None,
                frm: str = "dana@harborview.com") -> str:
    """Store a client's message that reached the mailbox ``arrived_before`` the store's now
    (a backlog); returns its disposition."""
    head = (f"From: Dana <{frm}>\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
            f"Message-ID: <c{uid}@harborview.com>\r\n")
    if in_reply_to:
        head += f"In-Reply-To: <{in_reply_to}>\r\n"
    if references:
        head += f"References: {references}\r\n"
    data = (head + "\r\nStill broken. > We have received your request\r\n").encode()
    return store_mail(store, uid, data, DECISION, at=store._clock() - arrived_before).disposition


def thread_of(sessions: sessionmaker[Session], policy: SlaPolicy, number: str,
              now: object) -> list[tuple[str, str]]:
    """(kind, what) per thread item: a message's Message-ID, our mail's kind, a note's text."""
    with sessions() as s:
        d = work_order_detail(s, policy, number, now)  # type: ignore[arg-type]
        assert d is not None
        return [(t.kind, t.message.message_id or "" if t.message else
                 t.outbox.kind if t.outbox else str(t.event.detail.get("text", "")
                                                    if t.event else ""))
                for t in d.thread]


def replied(sessions: sessionmaker[Session], policy: SlaPolicy, now: object) -> dict[str, bool]:
    with sessions() as s:
        page = queue_page(s, policy, QueueFilter(status="all"), now)  # type: ignore[arg-type]
        return {r.wo.number or "": r.client_replied for r in page.rows}


def ack_id(sessions: sessionmaker[Session], number: str) -> str:
    with sessions() as s:
        mid = s.scalar(select(Outbox.message_id).join(WorkOrder)
                       .where(WorkOrder.number == number, Outbox.kind == "ack"))
        assert mid
        return mid


# ---- the thread's order -------------------------------------------------------------------
def test_a_backlogged_reply_quoting_the_tag_comes_after_the_acknowledgment(world) -> None:
    """The demo's case: the request and the client's follow-up both arrived before the daemon
    ran, so the follow-up's arrival is earlier than the acknowledgment it quotes."""
    store, _, sessions, policy, clock = world
    n = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=1)
    assert client_mail(store, 2, f"Re: [{n}] help", arrived_before=timedelta(minutes=30)) \
        == "reply"
    assert thread_of(sessions, policy, n, clock.t) == [
        ("in", "m1@harborview.com"), ("ack", "ack"), ("in", "c2@harborview.com")]


def test_a_reply_naming_our_mail_in_references_comes_after_it(world) -> None:
    """No tag in the subject: the References header names the acknowledgment."""
    store, _, sessions, policy, clock = world
    n = open_wo(store, 1)
    ack = ack_id(sessions, n)
    clock.t = FRI_10 + timedelta(minutes=1)
    assert client_mail(store, 2, "Re: help", arrived_before=timedelta(hours=2),
                       references=f"<m1@harborview.com> <{ack}>") == "reply"
    assert [k for k, _ in thread_of(sessions, policy, n, clock.t)] == ["in", "ack", "in"]


def test_a_client_message_that_answers_none_of_ours_keeps_its_arrival(world) -> None:
    """A second message on the client's own thread (In-Reply-To their request, no tag) that
    arrived before we acknowledged stays before the acknowledgment: nothing is pushed after
    our mail that did not answer it."""
    store, _, sessions, policy, clock = world
    n = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=1)
    assert client_mail(store, 2, "Re: help", arrived_before=timedelta(minutes=30),
                       in_reply_to="m1@harborview.com") == "reply"
    assert [k for k, _ in thread_of(sessions, policy, n, clock.t)] == ["in", "in", "ack"]


def test_staff_mail_and_notes_in_the_order_they_were_written(world) -> None:
    store, desk, sessions, policy, clock = world
    n = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=5)
    desk.note(n, "bob", "first a note")
    desk.reply(n, "bob", "then a reply")
    clock.t += timedelta(minutes=5)
    desk.note(n, "bob", "a later note")
    kinds = [k for k, _ in thread_of(sessions, policy, n, clock.t)]
    # The note and the reply share a time: our mail goes before staff notes, by rule.
    assert kinds == ["in", "ack", "reply", "note", "note"]
    texts = [w for k, w in thread_of(sessions, policy, n, clock.t) if k == "note"]
    assert texts == ["first a note", "a later note"]


def test_headers_that_name_each_other_still_give_one_order() -> None:
    """Hostile mail can make two messages each other's cause: the order is still total."""
    t = FRI_10
    a = Entry("in", 1, t + timedelta(minutes=2), "a@x", answers=("b@x",), answer=True)
    b = Entry("in", 2, t + timedelta(minutes=1), "b@x", answers=("a@x",), answer=True)
    first = [e.id for e in in_order([a, b], "ITX-000001")]
    assert first == [e.id for e in in_order([b, a], "ITX-000001")]
    assert sorted(first) == [1, 2]


# ---- "client replied" -------------------------------------------------------------------------
def test_client_replied_until_staff_answer(world) -> None:
    store, desk, sessions, policy, clock = world
    n = open_wo(store, 1)
    other = open_wo(store, 9, frm="ken@morrisonfp.com")
    assert replied(sessions, policy, clock.t) == {n: False, other: False}  # a request only

    clock.t = FRI_10 + timedelta(minutes=10)
    client_mail(store, 2, f"Re: [{n}] help", arrived_before=timedelta(minutes=1))
    assert replied(sessions, policy, clock.t) == {n: True, other: False}

    clock.t += timedelta(minutes=10)
    desk.note(n, "bob", "looking")  # a note answers nobody
    assert replied(sessions, policy, clock.t)[n] is True
    desk.reply(n, "bob", "On it.")
    assert replied(sessions, policy, clock.t)[n] is False

    clock.t += timedelta(minutes=10)
    client_mail(store, 3, f"Re: [{n}] help", arrived_before=timedelta(minutes=1))
    assert replied(sessions, policy, clock.t)[n] is True
    with sessions() as s:
        d = work_order_detail(s, policy, n, clock.t)
        assert d is not None and d.client_replied


def test_client_replied_follows_the_true_order(world) -> None:
    """Staff answered at 10:20; the client's answer to that reply carries an arrival of 10:15
    (the mail server's clock is behind ours). It answers the reply, so it is the last word."""
    store, desk, sessions, policy, clock = world
    n = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=20)
    desk.reply(n, "bob", "Please restart Outlook.")
    with sessions() as s:
        reply_id = s.scalar(select(Outbox.message_id).where(Outbox.kind == "reply"))
    clock.t += timedelta(minutes=1)
    client_mail(store, 2, "Re: help", arrived_before=timedelta(minutes=6),
                in_reply_to=reply_id)
    assert replied(sessions, policy, clock.t)[n] is True
    assert [k for k, _ in thread_of(sessions, policy, n, clock.t)] == ["in", "ack", "reply",
                                                                       "in"]


def test_last_word_rules() -> None:
    t = FRI_10
    opener = Entry("in", 1, t)
    ack = Entry("ack", 1, t)
    answer = Entry("in", 2, t + timedelta(minutes=1), answer=True)
    reply = Entry("reply", 2, t + timedelta(minutes=2))
    assert not client_has_last_word([opener, ack])
    assert client_has_last_word([opener, ack, answer])
    assert not client_has_last_word([opener, ack, answer, reply])


# ---- the client's name ------------------------------------------------------------------------
def test_client_column_shows_the_recorded_name_else_the_requester(world) -> None:
    store, _, sessions, policy, clock = world
    named = open_wo(store, 1, frm="dana@harborview.com")
    unnamed = open_wo(store, 2, frm="jack@morrisonfp.com")
    with sessions.begin() as s:
        set_client(s, "harborview.com", "standard", "Harborview Dental")
    with sessions.begin() as s:
        s.execute(update(WorkOrder).where(WorkOrder.number == unnamed)
                  .values(requester_name=""))
    with sessions() as s:
        rows = {r.wo.number: r.client_name
                for r in queue_page(s, policy, QueueFilter(), clock.t).rows}
    assert rows == {named: "Harborview Dental", unnamed: "jack@morrisonfp.com"}
    third = open_wo(store, 3, frm="ken@morrisonfp.com")  # "Dana" is the display name
    with sessions() as s:
        rows = {r.wo.number: r.client_name
                for r in queue_page(s, policy, QueueFilter(), clock.t).rows}
    assert rows[third] == "Dana"


# ---- the acknowledgment's words -----------------------------------------------------------
def test_acknowledgment_text_is_what_was_sent_even_after_a_reclassification(world) -> None:
    store, desk, sessions, policy, clock = world
    n = open_wo(store, 1, "email_problem", "normal")
    acks = SentAcks(policy, from_address="helpdesk@itx.net", phone="800-555-0100")

    def text() -> str:
        with sessions() as s:
            wo = s.scalar(select(WorkOrder).where(WorkOrder.number == n))
            row = s.scalar(select(Outbox).where(Outbox.kind == "ack"))
            assert wo is not None and row is not None
            d = work_order_detail(s, policy, n, clock.t)
            assert d is not None
            return acks.text(row, wo, d.events)

    pending = text()
    assert n in pending and "800-555-0100" in pending
    # Reclassified before it went out: it goes out (and reads) with the new values.
    desk.reclassify(n, "bob", "website_down", "urgent")
    urgent = text()
    assert urgent != pending
    clock.t = FRI_10 + timedelta(minutes=2)
    with sessions.begin() as s:
        s.execute(update(Outbox).where(Outbox.kind == "ack")
                  .values(status="sent", sent_at=clock.t))
    # Reclassified after it went out: the page still shows the words sent.
    clock.t += timedelta(hours=1)
    desk.reclassify(n, "bob", "new_account", "normal")
    assert get(sessions, n).request_type == "new_account"
    assert text() == urgent


# ---- the client's history -----------------------------------------------------------------
def test_client_history_on_the_page_and_in_the_api(world, tmp_path) -> None:
    """The client's and the requester's other work orders, open first then newest first:
    never the work order itself, never another client's work order from someone else."""
    import re

    from starlette.testclient import TestClient

    from tests.deskenv import login
    from triage.desk import users
    from triage.storage.engine import make_read_sessionmaker
    from triage.storage.models import Client
    from triage.web.app import WebDeps, create_web_app

    store, desk, sessions, policy, clock = world

    def opened(uid: int, frm: str, subject: str) -> str:
        clock.t += timedelta(minutes=5)
        return open_wo(store, uid, frm=frm, subject=subject)

    old = opened(1, "dana@harborview.com", "old printer")
    ken = opened(2, "ken@harborview.com", "ken's laptop")
    this = opened(3, "dana@harborview.com", "current")
    other = opened(4, "eve@othercorp.com", "not ours")
    moved = opened(5, "dana@harborview.com", "under another client")
    desk.resolve(moved, "bob")  # the newest, listed after the open ones
    with sessions.begin() as s:  # dana's work order filed under another client
        othercorp = s.scalar(select(Client.id).where(Client.domain == "othercorp.com"))
        s.execute(update(WorkOrder).where(WorkOrder.number == moved)
                  .values(client_id=othercorp))
        bob = s.scalar(select(users.User).where(users.User.name == "bob"))
        assert bob is not None
        token = users.issue_api_token(s, bob)

    def history(number: str) -> list[tuple[str, str, bool]]:
        with sessions() as s:
            d = work_order_detail(s, policy, number, clock.t)
            assert d is not None
            return [(h.wo.number or "", h.wo.status, h.same_requester) for h in d.history]

    assert history(this) == [(ken, "new", False), (old, "new", True),
                             (moved, "resolved", True)]
    assert history(ken) == [(this, "new", False), (old, "new", False)]
    assert history(other) == [(moved, "resolved", False)]  # othercorp's, another requester

    app = create_web_app(WebDeps(sessions, make_read_sessionmaker(sessions.kw["bind"]), policy,
                                 desk, tmp_path / "att", clock))
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        r = client.get(f"/api/v1/work-orders/{this}",
                       headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
        got = r.json()["history"]
        assert [(h["number"], h["status"], h["same_requester"]) for h in got] == history(this)
        assert got[2]["subject"] == "under another client" and got[2]["resolved_at"] is not None
        assert got[1]["request_type"] == "email_problem" and got[1]["priority"] == "normal"
        login(client, "bob", "long enough password")
        page = client.get(f"/work-orders/{this}")
        assert page.status_code == 200
        section = page.text.split('aria-label="Client history"', 1)[1].split("</section>", 1)[0]
        assert re.findall(r'data-number="([^"]+)"', section) == [ken, old, moved]
        assert f'href="/work-orders/{ken}"' in section and "ken&#39;s laptop" in section
        assert this not in section and other not in section


def test_client_history_is_cut_to_the_newest_twenty(world) -> None:
    from triage.desk.queue import HISTORY_SIZE

    store, _, sessions, policy, clock = world
    numbers = []
    for uid in range(1, HISTORY_SIZE + 3):
        clock.t += timedelta(minutes=1)
        numbers.append(open_wo(store, uid, frm=f"user{uid}@harborview.com"))
    with sessions() as s:
        d = work_order_detail(s, policy, numbers[0], clock.t)
        assert d is not None
        assert [h.wo.number for h in d.history] == numbers[:0:-1][:HISTORY_SIZE]


def test_senders_without_a_domain_are_not_one_client(world) -> None:
    """They share the client row "unknown" (and, with no usable address, no requester);
    one's history never lists another's."""
    store, _desk, sessions, policy, clock = world
    a = open_wo(store, 31, frm="nobody", subject="first")
    clock.t += timedelta(minutes=5)
    b = open_wo(store, 32, frm="someone-else", subject="second")
    clock.t += timedelta(minutes=5)
    a2 = open_wo(store, 33, frm="nobody", subject="third")
    with sessions() as s:
        wa, wb = get(sessions, a), get(sessions, b)
        assert wa.client_id == wb.client_id  # the shared row the guard is about
        d = work_order_detail(s, policy, a2, clock.t)
        assert d is not None
        assert d.history == []
        d = work_order_detail(s, policy, b, clock.t)
        assert d is not None and d.history == []
