"""The live queue's "what changed since" and presence (triage.desk.live) on real SQLite and
PostgreSQL, and a client's reply racing a staff action on PostgreSQL: both version steps
are kept."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from tests.deskenv import desk_parts, events, get, open_wo, store_mail, user_id
from tests.factories import FRI_10, req
from triage.desk import live, users
from triage.desk.actions import NotFound
from triage.storage.models import Presence
from triage.workorders import WorkOrderStore


@pytest.fixture
def env(db_url: str, tmp_path: Path):
    """``(store, desk, sessions, clock)`` on each backend; staff: bob and carol."""
    with desk_parts(db_url, tmp_path) as d:
        with d.sessions.begin() as s:
            for name in ("bob", "carol"):
                users.add_user(s, name, "long enough password",
                               display_name=name.title() + " X")
        yield d.store, d.desk, d.sessions, d.clock


def client_reply(store: WorkOrderStore, uid: int, to_uid: int) -> str:
    """The requester of ``open_wo(store, to_uid)`` answers it."""
    data = (f"From: Dana <dana@harborview.com>\r\nTo: helpdesk@itx.net\r\n"
            f"Subject: Re: help\r\nMessage-ID: <r{uid}@harborview.com>\r\n"
            f"In-Reply-To: <m{to_uid}@harborview.com>\r\n\r\nStill broken, please call\r\n"
            ).encode()
    out = store_mail(store, uid, data, req("email_problem", "normal"))
    assert out.disposition == "reply", out
    return str(out.work_order)


# ---- what changed since -----------------------------------------------------------------------
def test_changes_name_new_and_changed_work_orders_after_the_cursor(env) -> None:
    store, desk, sessions, clock = env
    with sessions() as s:
        empty = live.changes_since(s, None)
    assert empty.cursor is None and empty.work_orders == []
    first = open_wo(store, 1)
    with sessions() as s:
        start = live.changes_since(s, None)
    assert start.cursor == FRI_10 and start.work_orders == []
    # Ten minutes on (beyond the overlap): a new work order and a staff note on the first.
    clock.t = FRI_10 + timedelta(minutes=10)
    second = open_wo(store, 2, subject="printer")
    clock.t = FRI_10 + timedelta(minutes=11)
    desk.note(first, "bob", "called them")
    with sessions() as s:
        c = live.changes_since(s, start.cursor)
    assert [(w.number, w.version) for w in c.work_orders] == [(first, 2), (second, 1)]
    assert c.cursor == FRI_10 + timedelta(minutes=11) and not c.more
    # The next poll from that cursor still sees both (inside the overlap), then none once
    # the overlap has passed without changes.
    with sessions() as s:
        again = live.changes_since(s, c.cursor)
        assert {w.number for w in again.work_orders} == {first, second}
        later = live.changes_since(s, c.cursor + live.OVERLAP + timedelta(seconds=1))
    assert later.work_orders == [] and later.cursor == c.cursor + live.OVERLAP + \
        timedelta(seconds=1)


def test_a_client_reply_is_a_change_and_too_many_changes_say_more(env) -> None:
    store, _, sessions, clock = env
    number = open_wo(store, 1)
    with sessions() as s:
        cursor = live.changes_since(s, None).cursor
    assert cursor is not None
    clock.t = FRI_10 + timedelta(minutes=30)
    client_reply(store, 50, 1)
    with sessions() as s:
        c = live.changes_since(s, cursor)
    assert [(w.number, w.version) for w in c.work_orders] == [(number, 2)]
    for uid in range(2, 6):
        open_wo(store, uid, subject=f"more {uid}")
    with sessions() as s:
        capped = live.changes_since(s, cursor, limit=3)
    assert capped.more and len(capped.work_orders) == 3
    assert capped.cursor == FRI_10 + timedelta(minutes=30)


# ---- presence ---------------------------------------------------------------------------------
def test_presence_lists_the_others_until_they_leave_or_go_quiet(env) -> None:
    store, _, sessions, _ = env
    number = open_wo(store, 1)
    bob, carol = user_id(sessions, "bob"), user_id(sessions, "carol")
    now = FRI_10
    with sessions.begin() as s:
        assert live.heartbeat(s, number, bob, "viewing", now).others == []
    with sessions.begin() as s:
        seen = live.heartbeat(s, number, carol, "replying", now + timedelta(seconds=5))
    assert [(p.name, p.display_name, p.state) for p in seen.others] == [
        ("bob", "Bob X", "viewing")]
    assert seen.version == 1
    # Bob's next beat (the same row, updated) sees Carol replying.
    with sessions.begin() as s:
        seen = live.heartbeat(s, number, bob, "viewing", now + timedelta(seconds=20))
    assert [(p.name, p.state) for p in seen.others] == [("carol", "replying")]
    with sessions() as s:
        assert s.scalar(select(Presence.id).where(Presence.user_id == bob).limit(1))
        assert len(list(s.scalars(select(Presence)))) == 2
    # Carol's last beat is over a minute old: she no longer counts.
    with sessions() as s:
        assert live.present(s, number, now + timedelta(seconds=66), besides=bob).others == []
        everyone = live.present(s, number, now + timedelta(seconds=30))
    assert [p.name for p in everyone.others] == ["bob", "carol"]
    # Bob leaves: his row is gone at once.
    with sessions.begin() as s:
        live.heartbeat(s, number, bob, "left", now + timedelta(seconds=31))
    with sessions() as s:
        assert [p.name for p in live.present(s, number, now + timedelta(seconds=32)).others] \
            == ["carol"]


def test_presence_rows_are_pruned_and_unknown_input_refused(env) -> None:
    store, _, sessions, _ = env
    a, b = open_wo(store, 1), open_wo(store, 2, subject="other")
    bob, carol = user_id(sessions, "bob"), user_id(sessions, "carol")
    with sessions.begin() as s:
        live.heartbeat(s, a, bob, "viewing", FRI_10)
    with sessions.begin() as s:  # an hour and more later, anyone's heartbeat prunes it
        live.heartbeat(s, b, carol, "viewing", FRI_10 + timedelta(hours=1, seconds=1))
    with sessions() as s:
        assert [r.user_id for r in s.scalars(select(Presence))] == [carol]
    with sessions.begin() as s, pytest.raises(ValueError):
        live.heartbeat(s, a, bob, "dancing", FRI_10)
    with sessions.begin() as s, pytest.raises(NotFound):
        live.heartbeat(s, "ITX-999999", bob, "viewing", FRI_10)


# ---- a client's reply racing a staff action ---------------------------------------------------
def _wait_for_lock_wait(sessions: sessionmaker[Session], worker: threading.Thread) -> None:
    """Until another backend of this database waits for a row lock (the store, blocked by
    the open staff transaction); the deadline only turns a hang into a failure."""
    deadline = time.monotonic() + 60
    with sessions() as s:
        while time.monotonic() < deadline and worker.is_alive():
            waiting = s.scalar(text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"))
            if waiting:
                return
            s.rollback()
            time.sleep(0.05)
    raise AssertionError("the store never waited for the staff action's row lock")


def test_a_client_reply_racing_a_staff_action_keeps_both_version_steps(
        pg_url: str, tmp_path: Path) -> None:
    with desk_parts(pg_url, tmp_path) as d:
        store, desk, sessions = d.store, d.desk, d.sessions
        number = open_wo(store, 1)
        assert get(sessions, number).version == 1
        stored: list[str] = []
        # A staff action holds the row (as Desk does) while the client's reply is stored.
        with sessions.begin() as s:
            wo = desk._locked(s, number, 1)
            desk._event(s, wo, "bob", "note", {"text": "on it"}, FRI_10)
            s.flush()
            worker = threading.Thread(target=lambda: stored.append(client_reply(store, 9, 1)))
            worker.start()
            _wait_for_lock_wait(sessions, worker)
        worker.join(60)
        assert stored == [number]
        assert get(sessions, number).version == 3
        steps = [(e.action, e.wo_version) for e in events(sessions, number)
                 if e.wo_version is not None]
        assert steps == [("note", 2), ("client_reply", 3)]
        # A page made after the note but before the reply is refused.
        with pytest.raises(Exception, match="changed since"):
            desk.note(number, "bob", "stale", version=2)
