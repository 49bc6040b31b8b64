"""Deferred deliveries (triage.outbox.recorders.SideDatabase): recorded in a SQLite database
beside the main one and moved into the outbox table by the next claim; what they must never
do is lose a delivery, apply one twice, or let a delivered row be claimed and sent again."""

from __future__ import annotations

import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from triage.outbox.recorders import Delivery, InTable, SideDatabase, recorder_for
from triage.outbox.store import OutboxStore, RetryPolicy
from triage.smtp import SendResult
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Event, Outbox

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
OK = SendResult(ok=True, permanent=False, code=250, text="2.0.0 Ok: queued")


def delivery(i: int, until: datetime = T0) -> Delivery:
    return Delivery(i, until, T0, "250 ok", "ack", None, 1)


def test_record_pending_release_round_trip(tmp_path: Path) -> None:
    side = SideDatabase.beside(tmp_path / "t.db")
    assert side.path == tmp_path / "t.db.deliveries"
    for i in range(3):
        side.record(None, delivery(i))  # type: ignore[arg-type]  # needs no engine
    got, upto = side.pending()
    assert [d.outbox_id for d in got] == [0, 1, 2] and got[0] == delivery(0)
    side.record(None, delivery(3))  # type: ignore[arg-type]  # after the read: kept
    side.release(upto)
    assert [d.outbox_id for d in side.pending()[0]] == [3]


def test_a_sequence_number_is_never_reused_once_released(tmp_path: Path) -> None:
    """Two claims read the same deliveries; the first releases them all; a delivery recorded
    then must not take a number the second claim's release still covers."""
    side = SideDatabase(tmp_path / "d.db")
    other = SideDatabase(tmp_path / "d.db")  # another process's connection
    side.record(None, delivery(1))  # type: ignore[arg-type]
    _, upto_a = side.pending()
    _, upto_b = other.pending()
    side.release(upto_a)
    other.record(None, delivery(2))  # type: ignore[arg-type]
    other.release(upto_b)  # the second claim's release, late
    assert [d.outbox_id for d in side.pending()[0]] == [2]


def test_the_recorder_follows_the_database(tmp_path: Path) -> None:
    assert isinstance(recorder_for(make_engine(f"sqlite:///{tmp_path / 'x.db'}")), SideDatabase)
    assert isinstance(recorder_for(make_engine("sqlite://")), InTable)


def _recorder(path: str, start: int, n: int) -> None:
    side = SideDatabase(Path(path))
    for i in range(start, start + n):
        side.record(None, delivery(i))  # type: ignore[arg-type]


def test_concurrent_records_and_takes_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    side = SideDatabase(tmp_path / "t.db.deliveries")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_recorder, args=(str(side.path), k * 1000, 400))
             for k in range(2)]
    for p in procs:
        p.start()
    seen: list[int] = []
    while any(p.is_alive() for p in procs):
        got, upto = side.pending()
        seen += [d.outbox_id for d in got]
        side.release(upto)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got, _ = side.pending()
    seen += [d.outbox_id for d in got]
    assert sorted(seen) == [*range(400), *range(1000, 1400)]


@pytest.fixture
def outbox(tmp_path: Path) -> OutboxStore:
    engine = make_engine(f"sqlite:///{tmp_path / 't.db'}")
    upgrade(engine)
    with engine.begin() as c:
        c.execute(insert(Outbox.__table__), [
            dict(kind="ack", to_addr=f"c{i}@client.test", message_id=f"m{i}@itx.net",
                 template="ack/other", context={}, status="pending", attempts=0,
                 next_attempt_at=T0, created_at=T0) for i in range(3)])
    now = [T0]
    store = OutboxStore(make_sessionmaker(engine), RetryPolicy(), lambda: now[0],
                        recorder=recorder_for(engine))
    assert isinstance(store.recorder, SideDatabase)
    store.now = now  # type: ignore[attr-defined]
    return store


def rows(store: OutboxStore) -> tuple[list[str], int]:
    with store._sessions() as s:
        return ([o.status for o in s.scalars(select(Outbox).order_by(Outbox.id))],
                s.scalar(select(func.count(Event.id)).where(Event.action == "ack_sent")) or 0)


def test_a_delivery_is_deferred_then_applied_by_the_next_claim_once(
        outbox: OutboxStore) -> None:
    jobs = outbox.claim(10)
    assert len(jobs) == 3
    outbox.record(jobs[0], OK)
    assert rows(outbox) == (["sending"] * 3, 0)  # in the side database only
    assert outbox.claim(10) == []  # the other two are still leased; the delivery is applied
    assert rows(outbox) == (["sent", "sending", "sending"], 1)
    # The same delivery applied again (a crash between commit and release): no effect.
    outbox.recorder.record(outbox._engine, Delivery(
        jobs[0].id, jobs[0].claimed_until, T0, "250 ok", "ack", None, jobs[0].attempts))
    outbox.flush()
    assert rows(outbox) == (["sent", "sending", "sending"], 1)


def test_a_deferred_row_whose_lease_ran_out_is_not_sent_again(outbox: OutboxStore) -> None:
    jobs = outbox.claim(10)
    outbox.record(jobs[1], OK)
    outbox.now[0] = T0 + timedelta(hours=1)  # type: ignore[attr-defined]  # leases are over
    again = outbox.claim(10)
    assert sorted(j.id for j in again) == [jobs[0].id, jobs[2].id]  # not the delivered one
    assert rows(outbox)[0][1] == "sent"


def test_a_deferred_delivery_survives_a_lease_that_ran_out_unclaimed(outbox: OutboxStore) -> None:
    """A slow restart: the lease is over, but no claim took the row before the delivery was
    applied (the next claim applies it first), so the delivery still counts."""
    jobs = outbox.claim(10)
    outbox.record(jobs[0], OK)
    with outbox._sessions.begin() as s:  # what the clock does to the lease meanwhile
        s.get(Outbox, jobs[0].id).claimed_until = T0 - timedelta(minutes=1)
    outbox.now[0] = T0 + timedelta(hours=1)  # type: ignore[attr-defined]
    again = outbox.claim(10)
    assert jobs[0].id not in {j.id for j in again}
    assert rows(outbox)[0][0] == "sent" and rows(outbox)[1] == 1


def test_a_delivery_from_a_claim_that_changed_hands_is_not_applied(outbox: OutboxStore) -> None:
    jobs = outbox.claim(10)
    outbox.now[0] = T0 + timedelta(hours=1)  # type: ignore[attr-defined]
    retaken = {j.id: j for j in outbox.claim(10)}  # another sweep holds them now
    outbox.record(jobs[0], OK)  # the old claim's answer, late
    outbox.flush()
    assert rows(outbox) == (["sending"] * 3, 0)
    outbox.record(retaken[jobs[0].id], OK)
    outbox.flush()
    assert rows(outbox) == (["sent", "sending", "sending"], 1)
