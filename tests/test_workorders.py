"""The store's guarantees on real SQLite and real PostgreSQL, with hand-made decisions
(the end-to-end tests use the real classifier)."""

from __future__ import annotations

import contextlib
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.conftest import throwaway_pg_database
from tests.factories import MBOX, NOW, ingest, mail, nonreq, req
from triage.messages import RawMessage
from triage.parse import parse
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Client, Event, Fetch, Message, Outbox, RawBlob, WorkOrder
from triage.workorders import Ingest, RetryBatch, StoreConfig, WorkOrderStore


@pytest.fixture
def store(db_url: str, tmp_path: Path):
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    st = WorkOrderStore(
        sessions,
        load_policy(),
        StoreConfig("helpdesk@itx.net", 2, tmp_path / "att", 0.6),
        lambda: NOW,
    )
    yield st, sessions
    engine.dispose()


def ack_id(sessions) -> str:
    with sessions() as s:
        return s.scalar(select(Outbox.message_id).order_by(Outbox.id))


def count(sessions, model, *where) -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_request_opens_work_order_with_sla_and_ack(store) -> None:
    st, sessions = store
    (o,) = st.store_batch([ingest(mail(1), req())])
    assert o.disposition == "work_order" and o.work_order == "ITX-000001" and o.acked
    with sessions() as s:
        wo = s.scalar(select(WorkOrder))
        assert wo.priority == "urgent" and wo.client.domain == "harborview.com"
        assert wo.callback_due == NOW + timedelta(hours=1)  # 1 business hour, open now
        # 10 open hours left on Friday, 2 more on Monday: Monday 10:00 New York
        assert wo.response_due == datetime(2026, 11, 30, 15, 0, tzinfo=UTC)
        ob = s.scalar(select(Outbox))
        assert ob.status == "pending" and ob.to_addr == "dana@harborview.com"
        assert re.fullmatch(r"ITX-000001\.ack\.1\.[0-9a-f]{12}@itx\.net", ob.message_id)
        assert ob.context["in_reply_to"] == "m1@harborview.com"
        assert s.scalar(select(RawBlob.data)) == mail(1).data
    assert st.stored_uids(MBOX, 7, ["1", "2"]) == {"1"}


def test_same_fetch_key_and_same_message_id_are_not_processed_twice(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    (again,) = st.store_batch([ingest(mail(1), req())])
    assert again.disposition == "already"
    (dup,) = st.store_batch([ingest(mail(9, mid="m1@harborview.com"), req())])
    assert dup.disposition == "duplicate"
    assert count(sessions, WorkOrder) == 1 and count(sessions, Outbox) == 1
    assert count(sessions, Fetch) == 2


def test_a_reused_message_id_with_other_content_is_a_message_of_its_own(store) -> None:
    """Web forms, scanners and broken mailers send many messages under one Message-ID: each
    is stored, decided and acknowledged; a second delivery of any of them is a duplicate."""
    st, sessions = store
    st.store_batch([ingest(mail(1, mid="form@web.example"), req())])
    other = mail(2, mid="form@web.example", subject="printer", body="the printer jams")
    (o,) = st.store_batch([ingest(other, req("printer_setup", "normal"))])
    assert o.disposition == "work_order" and o.work_order == "ITX-000002" and o.acked
    with sessions() as s:
        first, second = s.scalars(select(Message).order_by(Message.id)).all()
        assert second.message_id == first.message_id == "form@web.example"
        assert second.dedupe_key != first.dedupe_key and second.fingerprint != first.fingerprint
        assert second.raw is not None and second.raw.data == other.data
        assert second.work_order_id == 2 and s.get(WorkOrder, 2).subject == "printer"
        (reused,) = s.scalars(select(Event).where(Event.action == "message_id_reused")).all()
        assert reused.work_order_id == 2
        assert reused.detail == {"message_id": "form@web.example",
                                 "earlier_message": first.id, "message": second.id}
    assert count(sessions, Outbox, Outbox.work_order_id == 2) == 1
    # Each delivered again through another relay (a Received line more): duplicates of
    # the message they repeat, nothing new.
    trace = "Received: from relay2.example by mx.itx.net; Tue, 1 Dec 2026 10:00:00 -0500\r\n"
    again_first = mail(3, mid="form@web.example", extra=trace)
    again_other = mail(4, mid="form@web.example", subject="printer", body="the printer jams",
                       extra=trace)
    outs = st.store_batch([ingest(again_first, req()),
                           ingest(again_other, req("printer_setup", "normal"))])
    assert [o.disposition for o in outs] == ["duplicate", "duplicate"]
    with sessions() as s:
        dups = dict(s.execute(select(Fetch.uid, Fetch.message_pk).where(Fetch.duplicate)).all())
    assert dups == {"3": first.id, "4": second.id}
    assert count(sessions, WorkOrder) == 2 and count(sessions, Message) == 2
    assert count(sessions, Outbox) == 2


def test_a_reused_message_id_is_decided_by_its_own_content(store) -> None:
    """An auto-reply under a request's Message-ID is a non-request (recorded, not acked),
    and a third message under it is a work order again: each against the ID's first row."""
    st, sessions = store
    outs = st.store_batch([
        ingest(mail(1, mid="scan@mfp.example"), req()),
        ingest(mail(2, mid="scan@mfp.example", subject="Out of office", body="away",
                    extra="Auto-Submitted: auto-replied\r\n"), nonreq("auto_reply")),
        ingest(mail(3, mid="scan@mfp.example", subject="scan 3", body="page 3"), req()),
    ])
    assert [(o.disposition, o.reason) for o in outs] == [
        ("work_order", None), ("non_request", "auto_reply"), ("work_order", None)]
    assert count(sessions, Message) == 3 and count(sessions, Outbox) == 2
    with sessions() as s:
        events = s.execute(select(Event.work_order_id, Event.detail["message"].as_integer())
                           .where(Event.action == "message_id_reused")
                           .order_by(Event.id)).all()
    assert [tuple(e) for e in events] == [(None, 2), (2, 3)]


def test_rows_stored_before_fingerprints_are_compared_by_their_stored_content(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    with sessions.begin() as s:  # as written before migration 0007
        s.scalar(select(Message)).fingerprint = None
    trace = "Received: from relay2.example by mx.itx.net\r\n"
    outs = st.store_batch([ingest(mail(2, mid="m1@harborview.com", extra=trace), req()),
                           ingest(mail(3, mid="m1@harborview.com", body="other"), req())])
    assert [o.disposition for o in outs] == ["duplicate", "work_order"]
    assert count(sessions, Event, Event.action == "message_id_reused") == 1


def test_staff_open_a_stored_message_as_a_work_order_by_the_same_rules(store) -> None:
    """``open_work_order`` (the desk's "open as work order"): client, due dates from the
    original arrival, the acknowledgment under the sender's rate limit, an audit event."""
    st, sessions = store
    arrived = NOW - timedelta(hours=3)
    raws = [mail(i, frm="raj@patel.com", body=f"printer {i} broken", at=arrived)
            for i in (1, 2, 3)]
    st.store_batch([ingest(r, nonreq("thanks")) for r in raws])
    opened = []
    for r in raws:
        assert r.data is not None
        with sessions.begin() as s:
            opened.append(st.open_work_order(s, parse(r.data), req("printer_setup", "normal"),
                                             arrived, actor="ann", detail={"from_screened": 1}))
    assert [(o.number, o.acked) for o in opened] == [
        ("ITX-000001", True), ("ITX-000002", True), ("ITX-000003", False)]  # 2 an hour
    with sessions() as s:
        wo = s.get(WorkOrder, opened[0].work_order_id)
        assert wo.received_at == arrived and wo.client.domain == "patel.com"
        assert wo.fulfil_due == load_policy().due("printer_setup", "normal", "standard",
                                                  arrived).fulfil_due
        created = s.scalar(select(Event).where(Event.action == "created",
                                               Event.work_order_id == wo.id))
        assert created.actor == "ann" and created.detail["from_screened"] == 1
        ob = s.scalar(select(Outbox).where(Outbox.work_order_id == wo.id))
        assert ob.to_addr == "raj@patel.com" and ob.message_id.startswith("ITX-000001.ack.")
    assert count(sessions, Event, Event.action == "ack_suppressed") == 1
    assert count(sessions, Client) == 1


def test_reply_threads_and_reopens_without_new_ack(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    with sessions.begin() as s:
        wo = s.scalar(select(WorkOrder))
        wo.status = "resolved"
        wo.resolved_at = NOW
    reply = mail(
        2,
        subject="Re: help [ITX-000001]",
        extra=f"In-Reply-To: <{ack_id(sessions)}>\r\n",
        body="still broken",
    )
    (o,) = st.store_batch([ingest(reply, req())])
    assert o.disposition == "reply" and o.work_order == "ITX-000001" and not o.acked
    with sessions() as s:
        assert s.scalar(select(WorkOrder.status)) == "open"
        assert s.scalar(select(Event.id).where(Event.action == "reopened")) is not None
    assert count(sessions, Outbox) == 1 and count(sessions, WorkOrder) == 1


def test_thanks_reply_does_not_reopen(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    with sessions.begin() as s:
        s.scalar(select(WorkOrder)).status = "resolved"
    thanks = mail(2, subject="Re: help [ITX-000001]", body="thanks, all fixed")
    (o,) = st.store_batch([ingest(thanks, nonreq("thanks"))])
    assert o.disposition == "reply"
    with sessions() as s:
        assert s.scalar(select(WorkOrder.status)) == "resolved"


def test_tag_from_another_client_opens_flagged_work_order(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    forged = mail(2, frm="mallory@elsewhere.org", subject="Re: [ITX-000001] change password")
    (o,) = st.store_batch([ingest(forged, req("password_reset"))])
    assert o.disposition == "work_order" and o.work_order == "ITX-000002"
    with sessions() as s:
        wo = s.get(WorkOrder, 2)
        assert wo.needs_review and "another client" in (wo.review_reason or "")
    colleague = mail(3, frm="li@harborview.com", subject="Re: [ITX-000001] any news?")
    (o,) = st.store_batch([ingest(colleague, req())])
    assert o.disposition == "reply" and o.work_order == "ITX-000001"


@pytest.mark.parametrize("kind", ["auto_reply", "bounce", "bulk"])
def test_screened_mail_is_recorded_without_ack(store, kind: str) -> None:
    st, sessions = store
    (o,) = st.store_batch([ingest(mail(1, extra="Auto-Submitted: auto-replied\r\n"), nonreq(kind))])
    assert o.disposition == "non_request" and o.reason == kind
    assert count(sessions, Outbox) == 0 and count(sessions, WorkOrder) == 0
    assert count(sessions, Message, Message.disposition == "non_request") == 1


@pytest.mark.parametrize("kind", ["auto_reply", "bounce"])
def test_a_model_screened_auto_reply_or_bounce_still_threads(store, kind: str) -> None:
    """Only the header screen proves automation (rule 5); the text model's auto_reply or
    bounce from the requester, quoting our acknowledgment, joins the work order."""
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    answer = mail(2, subject="Re: help", extra=f"In-Reply-To: <{ack_id(sessions)}>\r\n")
    (o,) = st.store_batch([ingest(answer, nonreq(kind, by_header=False))])
    assert (o.disposition, o.work_order) == ("reply", "ITX-000001")
    proven = mail(3, subject="Re: help", extra=f"In-Reply-To: <{ack_id(sessions)}>\r\n")
    (o,) = st.store_batch([ingest(proven, nonreq(kind, by_header=True))])
    assert (o.disposition, o.reason, o.screened_by) == ("non_request", kind, "header")
    assert count(sessions, Message, Message.work_order_id.is_not(None)) == 2


def test_own_mail_is_never_acknowledged(store) -> None:
    st, sessions = store
    (o,) = st.store_batch([ingest(mail(1, frm="helpdesk@itx.net"), req())])
    assert o.disposition == "non_request" and o.reason == "own"
    assert count(sessions, Outbox) == 0


def test_ack_rate_limit_per_sender(store) -> None:
    st, sessions = store
    outs = st.store_batch([ingest(mail(i, body=f"problem {i}"), req()) for i in range(1, 4)])
    assert [o.acked for o in outs] == [True, True, False]
    assert count(sessions, WorkOrder) == 3 and count(sessions, Outbox) == 2
    assert count(sessions, Event, Event.action == "ack_suppressed") == 1


def test_oversize_and_failures_are_quarantined_and_neighbours_survive(store) -> None:
    st, sessions = store
    big = RawMessage(MBOX, 7, "5", 40_000_000, None, head=b"From: x@y.com\r\nSubject: big\r\n")
    bad_type = ingest(mail(6), req(label="no_such_type"))  # the SLA engine refuses it
    outs = st.store_batch(
        [
            ingest(mail(4), req()),
            Ingest(raw=big, error="oversize: 40000000 bytes"),
            bad_type,
            ingest(mail(7), req()),
        ]
    )
    assert [o.disposition for o in outs] == [
        "work_order",
        "quarantined",
        "quarantined",
        "work_order",
    ]
    with sessions() as s:
        q = s.scalars(
            select(Message).where(Message.disposition == "quarantined").order_by(Message.id)
        ).all()
        assert q[0].reason.startswith("oversize") and q[0].raw.truncated
        assert q[0].raw.data.startswith(b"From: x@y.com")
        assert "store failed" in q[1].reason and q[1].raw.data == mail(6).data
    assert count(sessions, Fetch) == 4  # every fetch accounted for


def test_uidvalidity_change_is_recorded(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    moved = RawMessage(MBOX, 8, "1", len(mail(1).data or b""), mail(1).data)
    (o,) = st.store_batch([ingest(moved, req())])
    assert o.disposition == "duplicate"  # the Message-ID saves us
    assert count(sessions, Event, Event.action == "uidvalidity_changed") == 1


def test_quoted_ack_id_from_a_stranger_does_not_thread(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1), req())])
    forged = mail(2, frm="mallory@evil.example", subject="Re: help",
                  extra=f"In-Reply-To: <{ack_id(sessions)}>\r\n")
    (o,) = st.store_batch([ingest(forged, req())])
    assert o.disposition == "work_order" and o.work_order == "ITX-000002"
    with sessions() as s:
        assert s.get(WorkOrder, 2).needs_review


def test_free_mail_users_are_not_one_client(store) -> None:
    st, sessions = store
    st.store_batch([ingest(mail(1, frm="alice@gmail.com"), req())])
    eve = mail(2, frm="eve@gmail.com", subject="Re: [ITX-000001] reset it")
    (o,) = st.store_batch([ingest(eve, req("password_reset"))])
    assert o.disposition == "work_order"  # not threaded onto Alice's work order
    with sessions() as s:
        keys = sorted(s.scalars(select(Client.domain)))
    assert keys == ["alice@gmail.com", "eve@gmail.com"]


def test_environment_failure_rolls_back_the_batch_for_a_retry(db_url: str,
                                                              tmp_path: Path) -> None:
    engine = make_engine(db_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the attachments folder should be")
    st = WorkOrderStore(sessions, load_policy(),
                        StoreConfig("helpdesk@itx.net", 5, blocked, 0.6), lambda: NOW)
    raw = (b"From: a@b.com\r\nSubject: scan\r\nMessage-ID: <att@b.com>\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/mixed; boundary="Z"\r\n\r\n--Z\r\n'
           b"Content-Type: text/plain\r\n\r\nserver down\r\n--Z\r\n"
           b"Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=a.pdf"
           b"\r\n\r\nPDF\r\n--Z--\r\n")
    item = Ingest(raw=RawMessage(MBOX, 7, "1", len(raw), raw), parsed=parse(raw),
                  decision=req("server_down"))
    with pytest.raises(RetryBatch):
        st.store_batch([ingest(mail(2), req()), item])
    assert count(sessions, Message) == 0 and count(sessions, Fetch) == 0  # nothing half-kept
    blocked.unlink()
    outs = st.store_batch([ingest(mail(2), req()), item])
    assert [o.disposition for o in outs] == ["work_order", "work_order"]
    engine.dispose()


def test_nul_in_html_is_stored_on_every_backend(store) -> None:
    st, _ = store
    raw = (b"From: a@b.com\r\nSubject: site\r\nMessage-ID: <nul@b.com>\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n<p>web\x00site down</p>\r\n")
    (o,) = st.store_batch([Ingest(raw=RawMessage(MBOX, 7, "1", len(raw), raw),
                                  parsed=parse(raw), decision=req("website_down"))])
    assert o.disposition == "work_order"


def _snapshot(sessions) -> dict[str, list[tuple]]:
    """What a batch left in the database, without ids' random parts or timestamps."""
    with sessions() as s:
        return {
            "work_orders": [(w.number, w.requester, w.request_type, w.priority, w.status,
                             w.needs_review, w.review_reason, w.next_due, w.client.domain)
                            for w in s.scalars(select(WorkOrder).order_by(WorkOrder.id))],
            "messages": [(m.id, m.dedupe_key, m.disposition, m.reason, m.work_order_id,
                          m.subject, m.from_addr)
                         for m in s.scalars(select(Message).order_by(Message.id))],
            "fetches": sorted((f.uid, f.message_pk, f.duplicate)
                              for f in s.scalars(select(Fetch))),
            "outbox": [(o.work_order_id, o.to_addr, o.message_id.split(".")[0:3], o.context)
                       for o in s.scalars(select(Outbox).order_by(Outbox.id))],
            "events": [(e.work_order_id, e.action, e.detail)
                       for e in s.scalars(select(Event).order_by(Event.id))],
            "clients": sorted(s.scalars(select(Client.domain))),
        }


def test_bulk_path_decides_as_the_careful_path(db_url: str, tmp_path: Path) -> None:
    """The same batches through both paths leave the same rows, including the cases where
    a message depends on another of its own batch (a reply to it, a tag guessing its
    number), duplicates inside the batch, the rate limit and a message that fails."""
    first = [ingest(mail(1), req()), ingest(mail(2, frm="li@harborview.com"), req())]
    batch = [
        ingest(mail(3, frm="raj@patel.com", subject="site down", at=NOW - timedelta(minutes=5)),
               req("website_down")),
        # replies to 3, in the same batch: threads onto the work order 3 opens
        ingest(mail(4, frm="raj@patel.com", subject="Re: site down",
                    extra="In-Reply-To: <m3@harborview.com>\r\n"), req()),
        # 3 delivered again: another trace, the same message
        ingest(mail(5, frm="raj@patel.com", subject="site down", mid="m3@harborview.com",
                    extra="Received: from relay2.patel.com by mx.itx.net\r\n"),
               req("website_down")),
        # another message under 3's Message-ID: its own work order, the reuse recorded
        ingest(mail(13, mid="m3@harborview.com", body="the printer jams"), req()),
        ingest(mail(6, frm="eve@evil.example", subject="Re: [ITX-000003] reset"),
               req("password_reset")),  # a tag naming 3's work order, from a stranger
        ingest(mail(7, frm="li@harborview.com", subject="Re: [ITX-000001] news?"), req()),
        ingest(mail(8, frm="helpdesk@itx.net"), req()),
        ingest(mail(9, frm="raj@patel.com", body="another"), req()),
        ingest(mail(10, frm="raj@patel.com", body="and another"), req()),  # rate limited
        # fails in the SLA engine; its arrival is known, so the bulk path works out its due
        # dates before taking the write lock, and must still quarantine it alone
        ingest(mail(11, at=NOW - timedelta(minutes=5)), req(label="no_such_type")),
        ingest(mail(12, extra="Auto-Submitted: auto-replied\r\n"), nonreq("auto_reply")),
        ingest(mail(1), req()),  # already stored
    ]
    snapshots = []
    with contextlib.ExitStack() as stack:
        urls = [db_url, (f"sqlite:///{tmp_path / 'second.db'}" if db_url.startswith("sqlite")
                         else stack.enter_context(throwaway_pg_database()))]
        for fast, url in zip((False, True), urls, strict=True):
            engine = make_engine(url)
            upgrade(engine)
            sessions = make_sessionmaker(engine)
            st = WorkOrderStore(sessions, load_policy(),
                                StoreConfig("helpdesk@itx.net", 2, tmp_path / "att", 0.6),
                                lambda: NOW)
            st.fast = fast
            outcomes = st.store_batch(first) + st.store_batch(batch)
            snapshots.append((outcomes, _snapshot(sessions), st.careful_batches))
            engine.dispose()
    (careful, careful_rows, _), (bulk, bulk_rows, handed_over) = snapshots
    assert handed_over == 0  # the bulk path did it all itself
    assert bulk == careful
    assert [o.disposition for o in bulk[2:]] == [
        "work_order", "reply", "duplicate", "work_order", "work_order", "reply", "non_request",
        "work_order", "work_order", "quarantined", "non_request", "already"]
    assert bulk_rows == careful_rows


def test_a_failed_bulk_write_is_rolled_back_and_the_batch_stored_message_by_message(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows the bulk path wrote before failing are undone (its savepoint), and the careful
    path then stores each message once."""
    from triage.store import write_bulk

    st, sessions = store
    real_write = write_bulk.write_rows

    def write_then_fail(*args: object, **kwargs: object) -> None:
        real_write(*args, **kwargs)  # type: ignore[arg-type]
        raise RuntimeError("refused after writing")

    monkeypatch.setattr(write_bulk, "write_rows", write_then_fail)
    outs = st.store_batch([ingest(mail(1), req()), ingest(mail(2, frm="li@x.com"), req()),
                           ingest(mail(3, extra="Auto-Submitted: auto-replied\r\n"),
                                  nonreq("auto_reply"))])
    assert [o.disposition for o in outs] == ["work_order", "work_order", "non_request"]
    assert st.careful_batches == 1
    assert count(sessions, WorkOrder) == 2 and count(sessions, Message) == 3
    assert count(sessions, Fetch) == 3 and count(sessions, Outbox) == 2
    # (PostgreSQL's sequence does not roll back, so the numbers may skip the undone rows.)
    assert None not in {o.work_order for o in outs[:2]} and outs[0].work_order != outs[1].work_order
