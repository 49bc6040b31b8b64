"""The sent log (triage.sentlog): deliveries appended beside a SQLite database and moved into
the outbox table by the next claim; what it must never do is lose a delivery, apply one
twice, or let a logged row be claimed and sent again."""

from __future__ import annotations

import logging
import multiprocessing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from triage.outbox import OutboxStore, RetryPolicy
from triage.sentlog import Delivery, SentLog
from triage.smtp import SendResult
from triage.storage.engine import make_engine, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import Event, Outbox

T0 = datetime(2026, 12, 1, 15, 0, tzinfo=UTC)
OK = SendResult(ok=True, permanent=False, code=250, text="2.0.0 Ok: queued")


def delivery(i: int, until: datetime = T0) -> Delivery:
    return Delivery(i, until, T0, "250 ok", "ack", None, 1)


def test_append_take_release_round_trip(tmp_path: Path) -> None:
    log = SentLog.beside(tmp_path / "t.db")
    for i in range(3):
        log.append(delivery(i))
    got, snaps = log.take()
    assert [d.outbox_id for d in got] == [0, 1, 2] and got[0] == delivery(0)
    log.append(delivery(3))  # lands in a new live file, not in the snapshot being applied
    assert sorted(d.outbox_id for d in log.take()[0]) == [0, 1, 2, 3]  # unreleased: again
    log.release(snaps)
    assert [d.outbox_id for d in log.take()[0]] == [3]


def test_a_torn_or_unreadable_line_is_skipped_and_said(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    log = SentLog(tmp_path / "t.db.sent")
    log.append(delivery(1))
    with log.path.open("ab") as fh:
        fh.write(b"{not json}\n" + b'{"id": 2, "until": "2026-12')  # a kill inside write()
    with caplog.at_level(logging.WARNING):
        got, _ = log.take()
    assert [d.outbox_id for d in got] == [1]
    assert "torn last line" in caplog.text and "unreadable line" in caplog.text


def test_a_record_after_a_torn_one_is_kept(tmp_path: Path) -> None:
    """A write cut short (ENOSPC, or another daemon on the same file killed mid-write)
    leaves a fragment; the next record, appended after it, must still be read."""
    log = SentLog(tmp_path / "t.db.sent")
    log.append(delivery(1))
    with log.path.open("ab") as fh:
        fh.write(b'\n{"id": 2, "until": "2026-12')
    log.append(delivery(3))
    assert [d.outbox_id for d in log.take()[0]] == [1, 3]


def test_a_database_name_with_glob_characters_finds_its_snapshots(tmp_path: Path) -> None:
    log = SentLog.beside(tmp_path / "triage[prod]*?.db")
    log.append(delivery(1))
    got, snaps = log.take()
    assert [d.outbox_id for d in got] == [1] and len(snaps) == 1
    log.release(snaps)
    assert log.take() == ([], [])


def _appender(path: str, start: int, n: int) -> None:
    log = SentLog(Path(path))
    for i in range(start, start + n):
        log.append(delivery(i))


def test_concurrent_appends_and_takes_lose_nothing_and_double_nothing(tmp_path: Path) -> None:
    log = SentLog(tmp_path / "t.db.sent")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(str(log.path), k * 1000, 400))
             for k in range(2)]
    for p in procs:
        p.start()
    seen: list[int] = []
    while any(p.is_alive() for p in procs):
        got, snaps = log.take()
        seen += [d.outbox_id for d in got]
        log.release(snaps)
    for p in procs:
        p.join()
        assert p.exitcode == 0
    got, snaps = log.take()
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
                        lambda contract: "America/New_York", lambda p: p,
                        sent_log=SentLog.beside(tmp_path / "t.db"))
    store.now = now  # type: ignore[attr-defined]
    return store


def rows(store: OutboxStore) -> tuple[list[str], int]:
    with store._sessions() as s:
        return ([o.status for o in s.scalars(select(Outbox).order_by(Outbox.id))],
                s.scalar(select(func.count(Event.id)).where(Event.action == "ack_sent")) or 0)


def test_a_delivery_is_logged_then_applied_by_the_next_claim_once(outbox: OutboxStore) -> None:
    jobs = outbox.claim(10)
    assert len(jobs) == 3
    outbox.record(jobs[0], OK)
    assert rows(outbox) == (["sending"] * 3, 0)  # in the log only: no database write
    assert outbox.claim(10) == []  # the other two are still leased; the log is applied
    assert rows(outbox) == (["sent", "sending", "sending"], 1)
    # The same delivery applied again (a crash between commit and release): no effect.
    assert outbox.sent_log is not None
    outbox.sent_log.append(Delivery(jobs[0].id, jobs[0].claimed_until, T0, "250 ok", "ack",
                                    None, jobs[0].attempts))
    outbox.flush()
    assert rows(outbox) == (["sent", "sending", "sending"], 1)


def test_a_logged_row_whose_lease_ran_out_is_not_sent_again(outbox: OutboxStore) -> None:
    jobs = outbox.claim(10)
    outbox.record(jobs[1], OK)
    outbox.now[0] = T0 + timedelta(hours=1)  # type: ignore[attr-defined]  # leases are over
    again = outbox.claim(10)
    assert sorted(j.id for j in again) == [jobs[0].id, jobs[2].id]  # not the delivered one
    assert rows(outbox)[0][1] == "sent"


def test_a_logged_delivery_survives_a_lease_that_ran_out_unclaimed(outbox: OutboxStore) -> None:
    """A slow restart: the lease is over, but no claim took the row before the log was
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
