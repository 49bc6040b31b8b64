"""The daemon as users run it, for the tests that start ``python -m triage`` as a subprocess
against the real Dovecot and SMTP sink (a pytest plugin, loaded by ``tests/conftest.py``).

Fixture: ``daemons`` (every daemon a test starts, reaped when it ends). Helpers: the daemon's
environment, the daemon process and a read-only look at its database, waiting with a
deadline, the fault tests' requests and what must hold of them afterwards, and the
processes a daemon leaves behind.

Waiting loops have deadlines only so that a broken daemon fails the test instead of hanging
it; no assertion is about speed.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TextIO

import pytest
from sqlalchemy import Engine, create_engine, func, select, update
from sqlalchemy.orm import Session as DbSession
from sqlalchemy.pool import NullPool

from tests.smtpsink import SmtpSink
from triage.storage.models import Fetch, Message, Outbox, WorkOrder

REPO = Path(__file__).resolve().parents[1]


# ---- the daemon's environment ---------------------------------------------------------------
def daemon_env(dovecot: Any, sink: SmtpSink, db_url: str, tmp_path: Path,
               **extra: str) -> dict[str, str]:
    """The environment of a daemon on the test's Dovecot, SMTP sink and database: ours without
    any TRIAGE_ setting, then the test's (``extra`` last)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env.update({
        "TRIAGE_MAILBOX_URL": f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/INBOX",
        "TRIAGE_MAILBOX_PASSWORD": dovecot.password,
        "TRIAGE_SMTP_URL": sink.url,
        "TRIAGE_DATABASE_URL": db_url,
        "TRIAGE_ATTACHMENTS_DIR": str(tmp_path / "att"),
        "TRIAGE_OUTBOX_RETRY_BASE": "0",
        "TRIAGE_POLL_INTERVAL": "1",
        "TRIAGE_OUTBOX_INTERVAL": "0.5",
        "TRIAGE_OPS_PORT": "0",  # no fixed port in tests; test_daemon serves ops on a free one
    })
    env.update(extra)
    return env


def unmarked(dovecot: Any) -> list[bytes]:
    """UIDs without the $Triaged keyword, asked by an independent client (stdlib imaplib)."""
    with dovecot.imap() as conn:
        typ, _ = conn.select("INBOX")
        assert typ == "OK"
        typ, data = conn.uid("SEARCH", "UNKEYWORD", "$Triaged")
        assert typ == "OK", data
        return data[0].split() if data and data[0] else []


# ---- the daemon as a subprocess ---------------------------------------------------------------
class Daemon:
    """``python -m triage run``; output goes to a file (a pipe could fill and block it)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out: TextIO = log.open("a")
        self.proc = subprocess.Popen([sys.executable, "-m", "triage", "run"], cwd=REPO, env=env,
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_started(self, timeout: float = 60) -> None:
        """Until it has logged (its SIGTERM handling is in place by then: a stop in the
        first instants of the interpreter, before any of our code runs, is a plain kill)."""
        deadline = time.monotonic() + timeout
        while not self.log.read_text().strip():
            assert self.alive() and time.monotonic() < deadline, "the daemon did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._out.close()

    def stop(self) -> int:
        """SIGTERM, as an operator stops it; the exit code."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.alive():
                self.proc.kill()
                self.proc.wait()
            self._out.close()

    def reap(self) -> None:
        """Killed if still running, its log closed: a test's teardown, whatever happened."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()
        if not self._out.closed:
            self._out.close()


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    """Every daemon a test starts is gone when the test ends, whatever happened."""
    started: list[Daemon] = []
    yield started
    for d in started:
        d.reap()


def wait_until(cond: Callable[[], bool], timeout: float, what: str,
               daemon: Daemon | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if daemon is not None and not daemon.alive():
            raise AssertionError(f"daemon exited while waiting for {what}: "
                                 + daemon.log.read_text()[-3000:])
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Db:
    """Read-only look at the daemon's database from the test process."""

    def __init__(self, url: str) -> None:
        self.engine: Engine = create_engine(url, poolclass=NullPool)

    def scalar(self, stmt: Any) -> Any:
        with DbSession(self.engine) as s:
            return s.scalar(stmt)

    def all(self, stmt: Any) -> list[Any]:
        with DbSession(self.engine) as s:
            return list(s.scalars(stmt))

    def ready(self) -> bool:
        """True once the daemon has created the schema."""
        try:
            self.scalar(select(func.count()).select_from(Message))
        except Exception:
            return False
        return True

    def stored(self) -> int:
        if not self.ready():
            return 0
        return self.scalar(select(func.count()).select_from(Message)) or 0

    def unsent(self) -> int:
        if not self.ready():
            return 0
        return self.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.status.in_(("pending", "sending")))) or 0

    def claimable(self) -> int:
        if not self.ready():
            return 0
        return self.scalar(select(func.count()).select_from(Outbox).where(
            Outbox.status == "pending")) or 0


class LeftBehind(NamedTuple):
    """What the daemons stored, read after they stopped."""

    messages: list[Message]  # incoming
    work_orders: list[WorkOrder]
    outbox: list[Outbox]
    fetches: int
    duplicate_fetches: int


def left_behind(url: str) -> LeftBehind:
    db = Db(url)
    try:
        return LeftBehind(
            db.all(select(Message).where(Message.direction == "in")),
            db.all(select(WorkOrder)),
            db.all(select(Outbox)),
            db.scalar(select(func.count()).select_from(Fetch)),
            db.scalar(select(func.count()).select_from(Fetch).where(Fetch.duplicate)))
    finally:
        db.engine.dispose()


# ---- the fault tests' requests and what must hold of them ------------------------------------
REQUESTS = [
    ("Locked out", "I am locked out of my email account, please reset my password."),
    ("Website down", "Our website is down and shows a 503 error, clients cannot reach it."),
    ("Printer", "The office printer does not print, please set it up on the new laptop."),
    ("QuickBooks error", "QuickBooks says the company file is damaged and will not open."),
    ("New hire", "Please create an email account for our new hire starting Monday."),
    ("Server down", "The server in the back office is not responding since this morning."),
    ("Install Acrobat", "Please install Adobe Acrobat on the reception computer."),
]


def request(i: int, sender: str | None = None, auto: bool = False) -> bytes:
    subject, body = REQUESTS[i % len(REQUESTS)]
    sender = sender or f"user{i}@client{i % 25}.test"
    extra = "Auto-Submitted: auto-replied\r\n" if auto else ""
    return (f"From: User {i} <{sender}>\r\nTo: helpdesk@itx.net\r\nSubject: {subject}\r\n"
            f"Date: Wed, 25 Nov 2026 14:00:00 -0500\r\nMessage-ID: <k{i}@faults.test>\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n{extra}\r\n{body} (ref {i})\r\n"
            ).encode()


def assert_each_request_once(requests: set[str], wos: list[WorkOrder], outbox: list[Outbox],
                             received: Counter[str], dovecot: Any) -> int:
    """One work order per request, nothing left unmarked, one sent acknowledgment per work
    order and every one of them seen at the sink; returns how many arrived twice."""
    roots = Counter(w.root_message_id for w in wos)
    assert set(roots) == requests and max(roots.values()) == 1
    assert unmarked(dovecot) == []
    assert len(outbox) == len(wos) and all(o.status == "sent" for o in outbox)
    assert set(received) == {f"<{o.message_id}>" for o in outbox}
    return sum(n - 1 for n in received.values())


def ack_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(
        str(email.message_from_bytes(r.data, policy=email.policy.default)["Message-ID"])
        for r in sink.received
    )


def expire_leases(db: Db) -> None:
    """A killed sender leaves its claimed rows leased for 5 minutes (outbox.py); play that
    time forward instead of waiting for it."""
    with DbSession(db.engine) as s, s.begin():
        s.execute(update(Outbox).where(Outbox.status == "sending").values(
            claimed_until=datetime.now(UTC) - timedelta(seconds=1)))


# ---- what a daemon leaves behind --------------------------------------------------------------
def child_pids(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_gone(pids: list[int], timeout: float = 10) -> None:
    """Until none of ``pids`` runs (a zombie waiting for its reaper counts as gone)."""
    deadline = time.monotonic() + timeout
    while any(Path(f"/proc/{p}").exists() and "zombie" not in
              Path(f"/proc/{p}/status").read_text() for p in pids):
        assert time.monotonic() < deadline, f"{pids} outlived the daemon"
        time.sleep(0.05)
