"""APPEND -> acknowledgment latency with the daemon running (``triage run``, IMAP IDLE).

    python bench/bench_latency.py [--count 200] [--db sqlite] [--gap 0.2]

The daemon runs as a subprocess against a loopback Dovecot, an aiosmtpd sink and a fresh
database. One message at a time is APPENDed (one open stdlib IMAP connection; the clock
starts just before the APPEND command) and the clock stops when the sink has accepted the
acknowledgment whose In-Reply-To names that message. A message the daemon decides not to
acknowledge (a non-request, per its own log line for the APPENDUID) is counted apart.
Messages come from bench/corpus.py; one warm-up message is not counted. The daemon's
environment is bench_backlog.py's ``daemon_env``, with the acknowledgment rate limits per
domain and in all set out of the way (``BENCH_ACK_LIMITS``).
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import logging
import math
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._servers import Servers, database, machine, servers
from bench.bench_backlog import REPO, daemon_env
from bench.corpus import generate

log = logging.getLogger("bench.latency")
MSGID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)
APPENDUID = re.compile(rb"APPENDUID \d+ (\d+)")
TIMEOUT = 30.0


class DaemonLog:
    """Reads the daemon's JSON log as it grows: outcome per UID, and readiness."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._pos = 0
        self.outcomes: dict[str, str] = {}
        self.idle_seen = False
        self.lines: list[str] = []

    def poll(self) -> None:
        with self.path.open() as f:
            f.seek(self._pos)
            chunk = f.read()
            # Keep a partial last line for the next poll.
            cut = chunk.rfind("\n") + 1
            self._pos += len(chunk[:cut].encode())
        for line in chunk[:cut].splitlines():
            self.lines.append(line)
            with contextlib.suppress(ValueError, KeyError):
                msg = json.loads(line)["msg"]
                m = re.match(r"uid=(\S+) disposition=(\S+) .*acked=(\S+)", msg)
                if m:
                    self.outcomes[m.group(1)] = f"{m.group(2)} acked={m.group(3)}"
                if msg.startswith("connected to"):
                    self.idle_seen = True


@contextlib.contextmanager
def daemon(srv: Servers, db_url: str, work: Path) -> Iterator[DaemonLog]:
    env = daemon_env(srv, srv.dovecot, db_url, work, None)
    log_path = work / "daemon.log"
    out = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "triage", "run"], env=env, cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT)
    dlog = DaemonLog(log_path)
    try:
        deadline = time.monotonic() + 60
        while not dlog.idle_seen:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start:\n" + log_path.read_text()[-3000:])
            time.sleep(0.05)
            dlog.poll()
        yield dlog
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        out.close()


def one(conn: imaplib.IMAP4, srv: Servers, dlog: DaemonLog, raw: bytes) -> float | str:
    """Seconds from APPEND to the sink's acceptance, or the reason no ack came."""
    m = MSGID.search(raw)
    assert m, "corpus messages carry a Message-ID"
    needle = b"In-Reply-To: <" + m.group(1) + b">"
    seen = len(srv.sink.received)
    t0 = time.perf_counter()
    typ, data = conn.append("INBOX", None, None, raw)
    if typ != "OK":
        raise RuntimeError(f"APPEND failed: {data!r}")
    found = APPENDUID.search(data[-1] if data and isinstance(data[-1], bytes) else b"")
    uid = found.group(1).decode() if found else None
    while time.perf_counter() - t0 < TIMEOUT:
        received = srv.sink.received
        for r in received[seen:]:
            if needle in r.data:
                return time.perf_counter() - t0
        seen = len(received)
        dlog.poll()
        if uid is not None and uid in dlog.outcomes and "acked=True" not in dlog.outcomes[uid]:
            return dlog.outcomes[uid]
        time.sleep(0.001)
    return "timeout"


def percentile(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    xs = sorted(xs)
    return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--db", default="sqlite", choices=["sqlite", "postgresql"])
    ap.add_argument("--gap", type=float, default=0.2, help="seconds between messages")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    msgs = list(generate(args.count + 1, seed=11))
    latencies: list[float] = []
    skipped: dict[str, int] = {}
    with servers() as srv, tempfile.TemporaryDirectory() as tmp, \
            database(args.db, Path(tmp)) as url, daemon(srv, url, Path(tmp)) as dlog:
        conn = imaplib.IMAP4(srv.dovecot.host, srv.dovecot.port, timeout=30)
        conn.login(srv.dovecot.user, srv.dovecot.password)
        try:
            for n, raw in enumerate(msgs):
                r = one(conn, srv, dlog, raw)
                if n == 0:
                    log.info("warm-up: %s", r)
                elif isinstance(r, float):
                    latencies.append(r)
                else:
                    skipped[r] = skipped.get(r, 0) + 1
                time.sleep(args.gap)
        finally:
            conn.logout()
    if not latencies:
        raise SystemExit(f"no acknowledgment measured; skipped {skipped}")
    ms = [x * 1000 for x in latencies]
    sys.stdout.write(
        f"machine: {machine()}\n\n| database | appended | acked | p50 | p90 | p99 | max |\n"
        f"|---|---:|---:|---:|---:|---:|---:|\n| {args.db} | {args.count} | {len(ms)} | "
        f"{statistics.median(ms):.0f} ms | {percentile(ms, 90):.0f} ms | "
        f"{percentile(ms, 99):.0f} ms | {max(ms):.0f} ms |\n\nnot acknowledged: {skipped}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
