"""Merging two work orders of one client, on real SQLite and PostgreSQL: the later one's
thread joins the earlier, the later one is closed with a pointer and its SLA clocks stop,
both are audited and move on a version, and a client's reply to the merged one threads into
the survivor."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from tests.deskenv import csrf_of, events, get, login, open_wo, store_mail
from tests.factories import FRI_10, req
from triage.desk.actions import ActionError, Conflict, NotFound
from triage.desk.merge import merge
from triage.desk.queue import QueueFilter, queue_page, work_order_detail
from triage.slawatch import SlaWatch
from triage.storage.models import Message, Outbox, SlaAlert


def deliver(store, uid: int, head: str, frm: str = "dana@harborview.com",
            body: str = "Still broken, please call") -> str | None:
    data = (f"From: Dana <{frm}>\r\nTo: helpdesk@itx.net\r\n{head}"
            f"Message-ID: <r{uid}@harborview.com>\r\n\r\n{body}\r\n").encode()
    return store_mail(store, uid, data, req("email_problem", "normal")).work_order


def test_the_later_joins_the_earlier_and_is_closed_with_a_pointer(env) -> None:
    store, desk, sessions, policy, clock = env
    first = open_wo(store, 1, subject="Outlook broken")
    clock.t = FRI_10 + timedelta(minutes=5)
    later = open_wo(store, 2, subject="Outlook still broken", frm="lee@harborview.com")
    v_first, v_later = get(sessions, first).version, get(sessions, later).version
    # Named from the later one's page: the earlier one survives all the same.
    done = merge(desk, later, first, "bob", version=v_later)
    assert (done.survivor, done.merged, done.messages) == (first, later, 1)
    a, b = get(sessions, first), get(sessions, later)
    assert b.merged_into_id == a.id and b.status == "resolved" and b.resolved_at == clock.t
    assert b.next_due is None and a.merged_into_id is None and a.status == "new"
    assert (a.version, b.version) == (v_first + 1, v_later + 1)
    assert events(sessions, first)[-1].action == "merged"
    assert events(sessions, first)[-1].detail["from"] == later
    assert events(sessions, later)[-1].action == "merged_into"
    assert events(sessions, later)[-1].detail["into"] == first
    with sessions() as s:
        d = work_order_detail(s, policy, first, clock.t)
        assert d is not None
        subjects = [t.message.subject for t in d.thread if t.message is not None]
        assert subjects == ["Outlook broken", "Outlook still broken"]
        # Both acknowledgments stay in the conversation.
        assert sorted(t.kind for t in d.thread if t.outbox is not None) == ["ack", "ack"]
        # The search finds the later one's words on the survivor (the index follows).
        found = queue_page(s, policy, QueueFilter(q="still", status="all"), clock.t)
        assert [r.wo.number for r in found.rows] == [first]
        gone = work_order_detail(s, policy, later, clock.t)
        assert gone is not None and gone.wo.merged_into is not None
        assert gone.wo.merged_into.number == first


def test_merging_is_refused_across_clients_and_twice(env) -> None:
    store, desk, sessions, _, _ = env
    a = open_wo(store, 1)
    b = open_wo(store, 2, frm="sam@otherco.com")
    c = open_wo(store, 3, frm="kim@harborview.com")
    with pytest.raises(ActionError, match="different clients"):
        merge(desk, a, b, "bob")
    with pytest.raises(ActionError, match="itself"):
        merge(desk, a, a, "bob")
    with pytest.raises(ActionError, match="no work order ITX-999999"):
        merge(desk, a, "ITX-999999", "bob")
    with pytest.raises(NotFound):
        merge(desk, "ITX-999999", a, "bob")
    with pytest.raises(Conflict):
        merge(desk, a, c, "bob", version=get(sessions, a).version - 1)
    assert get(sessions, c).merged_into_id is None
    merge(desk, a, c, "bob")
    with pytest.raises(ActionError, match=f"{c} was merged into {a}"):
        merge(desk, c, a, "bob")
    with pytest.raises(ActionError, match="merged into"):
        desk.reopen(c, "bob")
    with pytest.raises(ActionError, match="merged into"):
        desk.reply(c, "bob", "hello")


def test_senders_of_no_known_client_are_not_merged(env) -> None:
    store, desk, _, _, _ = env
    a = open_wo(store, 1, frm="root")
    b = open_wo(store, 2, frm="admin")
    with pytest.raises(ActionError, match="no known client"):
        merge(desk, a, b, "bob")


def test_a_chain_of_merges_points_at_the_open_one(env) -> None:
    store, desk, sessions, _, clock = env
    a = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=1)
    b = open_wo(store, 2)
    clock.t = FRI_10 + timedelta(minutes=2)
    c = open_wo(store, 3)
    merge(desk, c, b, "bob")  # c joins b
    merge(desk, b, a, "bob")  # b joins a: c now points at a too
    wo_a = get(sessions, a)
    assert get(sessions, b).merged_into_id == wo_a.id == get(sessions, c).merged_into_id
    with sessions() as s:
        assert s.scalar(select(Message.id).where(Message.work_order_id != wo_a.id)) is None


def test_a_reply_to_the_merged_one_threads_into_the_survivor(env) -> None:
    store, desk, sessions, _, clock = env
    first = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=5)
    later = open_wo(store, 2)
    with sessions() as s:
        later_id = get(sessions, later).id
        ack = s.scalar(select(Outbox.message_id).where(Outbox.work_order_id == later_id))
    merge(desk, first, later, "bob")
    v = get(sessions, first).version
    clock.t += timedelta(minutes=5)
    # By the merged one's acknowledgment (In-Reply-To), and by its tag alone.
    assert deliver(store, 10, f"Subject: Re: x\r\nIn-Reply-To: <{ack}>\r\n") == first
    assert deliver(store, 11, f"Subject: Re: [{later}] x\r\n") == first
    assert get(sessions, later).status == "resolved"
    assert get(sessions, first).version == v + 2
    assert [e.action for e in events(sessions, first)][-2:] == ["client_reply"] * 2


def test_the_merged_ones_clocks_stop(env) -> None:
    store, desk, sessions, policy, clock = env
    first = open_wo(store, 1)
    clock.t = FRI_10 + timedelta(minutes=5)
    later = open_wo(store, 2, "website_down", "urgent")
    merge(desk, first, later, "bob")
    clock.t = FRI_10 + timedelta(days=10)
    watch = SlaWatch(sessions, policy, clock, lead_address="lead@itx.net",
                     oncall_address=None, from_domain="itx.net")
    result = watch.run_once()
    later_id = get(sessions, later).id
    with sessions() as s:
        targets = list(s.scalars(select(SlaAlert.work_order_id)))
    # The survivor breached its own clocks; the merged one raised nothing.
    assert result.breached >= 1 and targets and later_id not in targets


def test_merge_through_the_api_and_the_form_with_bounds(web) -> None:
    client, _, data = web
    login(client)
    first, later = data["plain"], data["hostile"]  # one client (harborview.com)
    token = client.get("/api/v1/me").json()["csrf_token"]
    h = {"X-CSRF-Token": token}
    assert client.post(f"/api/v1/work-orders/{first}/merge", json={"other": later}
                       ).status_code == 403  # a cookie needs the CSRF header
    for bad in ("ITX-1 OR 1=1", "ITX-" + "9" * 40, ""):
        r = client.post(f"/api/v1/work-orders/{first}/merge", json={"other": bad}, headers=h)
        assert r.status_code == 422, bad
    r = client.post(f"/api/v1/work-orders/{first}/merge", json={"other": "ITX-999999"},
                    headers=h)
    assert r.status_code == 422 and "no work order ITX-999999" in r.json()["detail"]
    page = client.get(f"/work-orders/{later}")
    form = {"csrf_token": csrf_of(page.text), "other": "not a number"}
    r = client.post(f"/work-orders/{later}/merge", data=form)
    assert r.status_code == 422 and "e.g. ITX-000123" in r.text
    r = client.post(f"/work-orders/{later}/merge", data={**form, "other": "x" * 33})
    assert r.status_code == 422 and "Not a valid request" in r.text
    r = client.post(f"/api/v1/work-orders/{later}/merge", json={"other": first}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json() == {"survivor": first, "merged": later, "messages_moved": 1}
    merged = client.get(f"/api/v1/work-orders/{later}").json()
    assert merged["merged_into"] == first and merged["status"] == "resolved"
    assert client.get(f"/api/v1/work-orders/{first}").json()["merged_into"] is None
    page = client.get(f"/work-orders/{later}")
    assert page.status_code == 200 and f'Merged into <a href="/work-orders/{first}">' in page.text
    r = client.post(f"/work-orders/{later}/merge", data={**form, "other": first})
    assert r.status_code == 422 and f"{later} was merged into {first}" in r.text
