"""The tests' private Dovecot and aiosmtpd sink, started outside pytest for the benchmarks.

The classes come from ``tests/dovecot.py`` and ``tests/smtpsink.py`` unchanged; this module
only owns their lifetime (a temporary folder, start, stop, clean up) and, for PostgreSQL, a
throwaway database. Must run as root, like the tests: Dovecot's mail files belong to a
system user.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from tests.dovecot import DovecotServer, DovecotUser
from tests.smtpsink import SmtpSink

log = logging.getLogger(__name__)

PG_ADMIN_URL = os.environ.get(
    "TRIAGE_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


@dataclass
class Servers:
    dovecot: DovecotUser
    sink: SmtpSink
    root: Path

    def mailbox_url(self, folder: str = "INBOX") -> str:
        return f"imap+plain://{self.dovecot.user}@127.0.0.1:{self.dovecot.port}/{folder}"


@contextlib.contextmanager
def servers() -> Iterator[Servers]:
    """A running Dovecot with one fresh user and a plain SMTP sink; both stopped after."""
    root = Path(tempfile.mkdtemp(prefix="triage-bench-"))
    root.chmod(0o755)  # Dovecot's mail processes (not root) must reach the mail below it
    # aiosmtpd logs each session at INFO; at 10,000 acknowledgments that is the benchmark.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    dovecot = DovecotServer(root / "dovecot")
    dovecot.start()
    sink = SmtpSink("plain")
    sink.start()
    try:
        yield Servers(DovecotUser(dovecot, dovecot.new_user()), sink, root)
    finally:
        sink.stop()
        if dovecot.running:
            dovecot.stop()
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file in ``folder``, or a throwaway PostgreSQL DB."""
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'triage.db'}"
        return
    name = f"triage_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0].replace("+psycopg", "") + "/" + name
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pin(cpus: set[int] | None) -> None:
    """Keep the calling process, and every thread and process it starts from now on, on
    ``cpus`` (None: leave it where it is)."""
    if cpus:
        os.sched_setaffinity(0, cpus)


def affinity(pid: int) -> set[int]:
    """The CPUs any thread of process ``pid`` may run on (the union over its threads)."""
    cpus: set[int] = set()
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            for line in status.read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    for part in line.split(":", 1)[1].strip().split(","):
                        low, _, high = part.partition("-")
                        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


@contextlib.contextmanager
def web_server(script: str, url: str, *, ready_path: str = "/login",
               cpus: set[int] | None = None, args: tuple[str, ...] = ()
               ) -> Iterator[tuple[str, int]]:
    """``python SCRIPT --serve URL --port N`` (a benchmark serving the staff app from the
    database at URL) on a free loopback port; yields its base URL and pid once ``ready_path``
    answers 200, and stops it with SIGINT (SIGKILL after 10 s). With ``cpus`` the server is
    started on those CPUs (before its first thread, so all of its threads stay there);
    ``args`` go on its command line."""
    import signal
    import socket
    import time

    import httpx

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, script, "--serve", url, "--port", str(port), *args],
                            cwd=Path(__file__).resolve().parent.parent,
                            preexec_fn=(lambda: pin(cpus)) if cpus else None)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + ready_path, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start in 60 s")
            time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load_maildir(user: DovecotUser, messages: Iterator[bytes], chunk: int = 1000) -> int:
    """Drop messages into ``Maildir/new`` (not APPEND: 10x faster); then let Dovecot index
    them once, so the daemon's first SELECT does not pay for the indexing."""
    total = 0
    batch: list[bytes] = []
    for raw in messages:
        batch.append(raw)
        if len(batch) >= chunk:
            user.deliver_files(batch)
            total += len(batch)
            batch = []
    if batch:
        user.deliver_files(batch)
        total += len(batch)
    with user.imap() as conn:
        typ, data = conn.select("INBOX")
        if typ != "OK":
            raise RuntimeError(f"SELECT failed: {data!r}; {user.server.log_tail()}")
        conn.uid("SEARCH", "ALL")
    return total


def machine() -> str:
    """One line about where the figures come from."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GB"
    dovecot = subprocess.run(["/usr/sbin/dovecot", "--version"], capture_output=True,
                             text=True, check=False).stdout.strip()
    return (f"{os.cpu_count()} cores ({cpu}), {mem} RAM, Python {sys.version.split()[0]}, "
            f"Dovecot {dovecot}")
