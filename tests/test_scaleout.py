"""Several ``triage run`` processes on one PostgreSQL and one mailbox (issue 6), against the
real thing: three subprocesses, a real Dovecot, a real aiosmtpd sink, a throwaway PostgreSQL
database.

Only the holder of the mailbox lease (triage/lease.py, an advisory lock) polls; the others
keep sending from the shared outbox. SIGKILL the holder mid-run, keep delivering: a standby
takes the lease over and every message is handled once, every acknowledgment sent once (at
most one duplicate when the kill landed inside an SMTP transaction), nothing left unmarked.

Waiting loops have deadlines only so that a broken daemon fails the test instead of hanging
it; no assertion is about speed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.daemons import (
    Daemon,
    Db,
    ack_ids,
    assert_each_request_once,
    daemon_env,
    expire_leases,
    left_behind,
    request,
    unmarked,
    wait_until,
)
from tests.smtpsink import handler
from triage.lease import lease_key

pytestmark = [pytest.mark.imap, pytest.mark.slow]

FIRST = 150  # delivered before the kill
LATER = 50  # delivered after it
AUTO_EVERY = 10  # every 10th message is an auto-reply, not a request


@pytest.fixture
def daemons() -> Iterator[dict[str, Daemon]]:
    started: dict[str, Daemon] = {}
    yield started
    for d in started.values():
        d.reap()


def lease_holders(db: Db) -> list[str]:
    """application_name of every session holding an advisory lock in this database."""
    with db.engine.connect() as c:
        return list(c.execute(text(
            "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
            " WHERE l.locktype = 'advisory' AND l.granted"
            " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )).scalars())


def took_lease(d: Daemon) -> bool:
    """The daemon logged taking the mailbox lease (lease.py logs it once per acquisition)."""
    return "acquired (key" in d.log.read_text()


def test_lease_key_is_stable_and_signed() -> None:
    k = lease_key("triage-mailbox:imap:helpdesk@mail.itx.net:993/INBOX")
    assert k == lease_key("triage-mailbox:imap:helpdesk@mail.itx.net:993/INBOX")
    assert -(2**63) <= k < 2**63
    assert k != lease_key("triage-mailbox:imap:helpdesk@mail.itx.net:993/Other")


def test_three_daemons_one_mailbox_holder_killed(dovecot, sink, pg_url: str, tmp_path: Path,
                                                  daemons: dict[str, Daemon]) -> None:
    db = Db(pg_url)
    msgs = [request(i, auto=(i % AUTO_EVERY == 0)) for i in range(FIRST + LATER)]
    total = len(msgs)

    def start(n: int) -> Daemon:
        name = f"triage-{n}"
        env = daemon_env(dovecot, sink, f"{pg_url}?application_name={name}", tmp_path,
                         TRIAGE_BATCH_SIZE="20", TRIAGE_LEASE_RETRY="0.5",
                         TRIAGE_LOG_FORMAT="text", PYTHONUNBUFFERED="1")
        d = daemons[name] = Daemon(env, tmp_path / f"{name}.log")
        return d

    try:
        dovecot.deliver_files(msgs[:FIRST])
        # The first one creates the schema; three migrating an empty database at once would
        # race on CREATE TABLE (migrate.py takes no lock), which is not what this tests.
        first = start(1)
        wait_until(db.ready, 60, "the schema", first)
        start(2)
        start(3)
        wait_until(lambda: db.stored() >= 40 and len(lease_holders(db)) == 1, 60,
                   "progress under one lease holder", first)
        holders = lease_holders(db)
        assert len(holders) == 1 and holders[0] in daemons, holders
        victim = holders[0]
        standbys = [n for n in daemons if n != victim]
        assert all(daemons[n].alive() for n in daemons)
        # The standbys never polled: they never held the lease.
        assert not any(took_lease(daemons[n]) for n in standbys)

        in_txn = handler(sink).open_transactions()
        stored_at_kill = db.stored()
        daemons[victim].kill()
        handler(sink).sessions.clear()
        expire_leases(db)  # the victim's claimed outbox rows: play their 5 minutes forward
        dovecot.deliver_files(msgs[FIRST:])

        # The standby that takes over says so in its log (unbuffered). pg_locks is not used to
        # name it: it lists every advisory lock in the database, not just the mailbox's.
        wait_until(lambda: any(took_lease(daemons[n]) for n in standbys), 30,
                   "a standby to take the lease")
        successor = next(n for n in standbys if took_lease(daemons[n]))
        wait_until(lambda: db.stored() == total and db.unsent() == 0, 90, "all stored and sent",
                   daemons[successor])
        wait_until(lambda: unmarked(dovecot) == [], 30, "all marked", daemons[successor])
        # Exactly one process held the lease at a time: the victim, then one successor.
        assert [n for n in standbys if took_lease(daemons[n])] == [successor]
        # No two pollers ever raced on one message (a race shows as a unique-key violation,
        # a quarantined message and "poll failed" in the loser's log).
        for n, d in daemons.items():
            log = d.log.read_text()
            assert " ERROR " not in log and "quarantin" not in log, (n, log[-3000:])
        codes = {n: daemons[n].stop() for n in standbys}
        assert codes == {n: 0 for n in standbys}, {
            n: daemons[n].log.read_text()[-3000:] for n in standbys}
    finally:
        db.engine.dispose()

    messages, wos, outbox, fetches, dup_fetches = left_behind(pg_url)

    # Every message handled exactly once.
    by_mid = Counter(m.message_id for m in messages)
    assert len(messages) == len(by_mid) == total and fetches == total and dup_fetches == 0
    requests = {f"k{i}@faults.test" for i in range(total) if i % AUTO_EVERY}
    duplicates = assert_each_request_once(requests, wos, outbox, ack_ids(sink), dovecot)
    # One duplicate acknowledgment at most, and only for a kill inside SMTP.
    assert duplicates <= (1 if in_txn else 0), (duplicates, in_txn)
    print(f"\nscale-out: {total} messages, 3 daemons, holder {victim} killed at {stored_at_kill} "
          f"stored (SMTP states at the kill: {in_txn}), {successor} took over; "
          f"{duplicates} duplicate acknowledgments")
