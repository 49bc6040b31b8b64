"""A backlog of N messages waiting in a loopback Dovecot, drained by ``triage run --once``.

    python bench/bench_backlog.py [--count 10000] [--db sqlite postgresql] [--runs 1]
                                  [--batch-size 50] [--profile out.txt] [--overlap]
                                  [--repo OTHER_TREE]

The messages (bench/corpus.py) are dropped into Maildir/new, not APPENDed. The daemon runs as
its users run it: a subprocess, configured by TRIAGE_* variables, under /usr/bin/time -v for
its peak RSS. The clock runs from spawn to exit, so it covers start-up (model, migrations),
every work order stored and marked, and every acknowledgment accepted by the aiosmtpd sink;
afterwards the database and the sink are checked (no pending outbox row; sink count = sent).
Phases come from the daemon's own JSON log (first and last ``disposition=`` line).

The acknowledgment rate limits per domain and in all are set far above the backlog
(``BENCH_ACK_LIMITS``): 10,000 messages (1,185 domains, up to 30 messages each, at most 5
per normalised sender) are acknowledged within minutes, which the production defaults (30
per domain, 1,000 in all per hour) would cut to about a tenth, so the bench would measure
fewer acknowledgments than it means to. bench_latency.py and bench_peer_django_helpdesk.py
run the daemon through ``daemon_env`` too.

``--profile FILE`` runs py-spy over one more SQLite run (all threads: parsing, classifying and
storing run in a worker thread) and writes the top functions by own and inclusive time.

``--overlap`` runs ``run --once`` with the outbox drained during ingestion
(``Runner.process_waiting(send=True)``, the one-line change proposed for ``service.py``), via
``python bench/bench_backlog.py --daemon-overlap``, which is ``triage run --once`` with that
argument set. ``--repo DIR`` runs the daemon from another copy of the tree (A/B comparisons
on the same, often busy, machine). The CPU column is the daemon's user + system time: on a
shared machine it moves less than the wall clock.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from bench._rss import TreeRss
from bench._servers import Servers, database, load_maildir, machine, servers
from bench.corpus import generate
from tests.dovecot import DovecotUser
from triage.storage.models import Message, Outbox, WorkOrder

log = logging.getLogger("bench.backlog")
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    db: str
    count: int
    wall: float
    startup: float
    ingest: float
    drain: float
    rss_mb: float
    cpu: float
    work_orders: int
    acks: int
    dispositions: dict[str, int]
    tree_rss_mb: float = float("nan")  # peak of the sum over the daemon's processes
    tree_pss_mb: float = float("nan")  # the same in PSS (shared pages counted once)
    process_rss_mb: list[float] = field(default_factory=list)  # each one's peak
    process_cpu: list[float] = field(default_factory=list)  # each one's CPU seconds

    @property
    def rate(self) -> float:
        return self.count / self.wall

    def row(self) -> str:
        each = " + ".join(f"{m:.0f}" for m in self.process_rss_mb)
        cpus = " + ".join(f"{c:.1f}" for c in self.process_cpu)
        return (f"| {self.db} | {self.count:,} | {self.wall:.1f} s | {self.rate:,.0f} | "
                f"{self.startup:.1f} / {self.ingest:.1f} / {self.drain:.1f} s | "
                f"{self.count / self.ingest:,.0f} | {self.rss_mb:.0f} MB | "
                f"{self.tree_rss_mb:.0f} MB ({each}); PSS {self.tree_pss_mb:.0f} MB | "
                f"{self.cpu:.1f} s ({self.cpu * 1000 / self.count:.2f} ms/msg; {cpus}) | "
                f"{self.work_orders:,} / {self.acks:,} |")


# Backscatter limits out of the bench's way (see the module docstring); the per-address limit
# stays the default: the corpus gives every sender few enough requests.
BENCH_ACK_LIMITS = {
    "TRIAGE_ACK_RATE_PER_DOMAIN_PER_HOUR": "1000000",
    "TRIAGE_ACK_RATE_GLOBAL_PER_HOUR": "1000000",
}


def daemon_env(srv: Servers, user: DovecotUser, db_url: str, work: Path,
               batch_size: int | None, repo: Path = REPO) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "TRIAGE_MAILBOX_URL": f"imap+plain://{user.user}@127.0.0.1:{user.port}/INBOX",
        "TRIAGE_MAILBOX_PASSWORD": user.password,
        "TRIAGE_SMTP_URL": srv.sink.url,
        "TRIAGE_OPS_PORT": "0",
        "TRIAGE_DATABASE_URL": db_url,
        "TRIAGE_ATTACHMENTS_DIR": str(work / "attachments"),
        "TRIAGE_LOG_FORMAT": "json",
        "PYTHONPATH": str(repo),
        **BENCH_ACK_LIMITS,
    })
    if batch_size:
        env["TRIAGE_BATCH_SIZE"] = str(batch_size)
    return env


_OUTCOME = re.compile(r'"msg": "uid=\S+ disposition=')  # one line per stored message


def _ts(line: str) -> float:
    return datetime.fromisoformat(json.loads(line)["ts"]).timestamp()


def phases(log_path: Path, started: float, ended: float) -> tuple[float, float, float]:
    """(start-up, ingest, outbox drain) seconds from the daemon's log."""
    first = last = None
    with log_path.open() as f:
        for line in f:
            if _OUTCOME.search(line):
                t = _ts(line)
                first = t if first is None else first
                last = t
    if first is None or last is None:
        return ended - started, 0.0, 0.0
    return first - started, last - first, ended - last


def max_rss_mb(time_output: str) -> float:
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", time_output)
    return int(m.group(1)) / 1024 if m else float("nan")


def cpu_seconds(time_output: str) -> float:
    user = re.search(r"User time \(seconds\): ([\d.]+)", time_output)
    system = re.search(r"System time \(seconds\): ([\d.]+)", time_output)
    return float(user.group(1)) + float(system.group(1)) if user and system else float("nan")


def check(db_url: str, sink_before: int, srv: Servers) -> tuple[int, int, dict[str, int]]:
    """Work orders, acks accepted by the sink, dispositions; fails loudly on a loose end."""
    eng = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"),
                        poolclass=NullPool)
    with eng.connect() as c:
        wos = c.scalar(select(func.count()).select_from(WorkOrder)) or 0
        by_status: dict[str, int] = {
            s: n for s, n in c.execute(select(Outbox.status, func.count())
                                       .group_by(Outbox.status))}
        disp: dict[str, int] = {
            d: n for d, n in c.execute(select(Message.disposition, func.count())
                                       .group_by(Message.disposition))}
    eng.dispose()
    received = len(srv.sink.received) - sink_before
    if set(by_status) - {"sent"} or by_status.get("sent", 0) != received:
        raise RuntimeError(f"loose ends: outbox {by_status}, sink received {received}")
    return wos, received, disp


def run_once(srv: Servers, kind: str, count: int, batch_size: int | None,
             profile: Path | None = None, overlap: bool = False, repo: Path = REPO) -> Result:
    user = DovecotUser(srv.dovecot.server, srv.dovecot.server.new_user())
    t0 = time.perf_counter()
    n = load_maildir(user, generate(count))
    log.info("loaded %d messages into %s in %.1fs", n, user.user, time.perf_counter() - t0)
    with tempfile.TemporaryDirectory(prefix="bench-backlog-") as tmp:
        work = Path(tmp)
        with database(kind, work) as db_url:
            env = daemon_env(srv, user, db_url, work, batch_size, repo)
            cmd = [sys.executable, "-m", "triage", "run", "--once"]
            if overlap:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--daemon-overlap"]
            if profile:
                raw = work / "profile.txt"
                cmd = ["py-spy", "record", "--format", "raw", "--rate", "200", "--threads",
                       "--subprocesses",
                       "--output", str(raw), "--", *cmd]
            log_path = work / "daemon.log"
            sink_before = len(srv.sink.received)
            started = time.time()
            with log_path.open("w") as out:
                proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], env=env, cwd=repo,
                                        stdout=out, stderr=subprocess.PIPE, text=True)
                with TreeRss(proc.pid) as tree:
                    _, stderr = proc.communicate()
            ended = time.time()
            if proc.returncode != 0:
                raise RuntimeError(f"daemon exited {proc.returncode}: {stderr[-2000:]}")
            wos, acks, disp = check(db_url, sink_before, srv)
            startup, ingest, drain = phases(log_path, started, ended)
            if profile:
                profile.write_text(summarise_profile(raw))
                shutil.copy(raw, profile.with_suffix(".folded"))
            return Result(kind, n, ended - started, startup, ingest, drain,
                          max_rss_mb(stderr), cpu_seconds(stderr), wos, acks, disp,
                          tree.peak_sum_mb, tree.peak_pss_sum_mb, tree.python_peaks_mb(),
                          tree.python_cpu())


def summarise_profile(raw: Path, top: int = 25) -> str:
    """Top functions by own samples and by inclusive samples, from py-spy's collapsed stacks
    (idle waits of the event loop and the thread pool are counted, then shown apart)."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        k = int(n)
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        if not frames:
            continue
        total += k
        own[_short(frames[-1])] += k
        for f in set(map(_short, frames)):
            incl[f] += k
    lines = [f"total samples {total} (all threads, 200 Hz)", "", "own time:"]
    lines += [f"{v / total:6.1%}  {k}" for k, v in own.most_common(top)]
    lines += ["", "inclusive time, the project's own functions:"]
    ours = [(k, v) for k, v in incl.most_common() if "triage/" in k or "classifiers/" in k]
    lines += [f"{v / total:6.1%}  {k}" for k, v in ours[: top * 2]]
    lines += ["", "inclusive time, all:"]
    lines += [f"{v / total:6.1%}  {k}" for k, v in incl.most_common(top * 2)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``func (path/to/module.py:123)`` -> ``func (module.py)``."""
    m = re.match(r"(.*) \((.*?):\d+\)$", frame)
    if not m:
        return frame
    path = m.group(2)
    parts = Path(path).parts
    where = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{m.group(1)} ({where})"


def daemon_overlap() -> int:
    """``triage run --once`` with ``process_waiting(send=True)``: the proposed service.py."""
    import functools

    from triage.cli import main as cli_main
    from triage.pipeline import Runner

    Runner.process_waiting = functools.partialmethod(  # type: ignore[method-assign]
        Runner.process_waiting, send=True)
    return cli_main(["run", "--once"])


def main() -> int:
    if sys.argv[1:] == ["--daemon-overlap"]:
        return daemon_overlap()
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, help="TRIAGE_BATCH_SIZE (default: the daemon's)")
    ap.add_argument("--profile", type=Path, help="also one py-spy run on SQLite -> FILE")
    ap.add_argument("--overlap", action="store_true",
                    help="drain the outbox during ingestion (process_waiting(send=True))")
    ap.add_argument("--repo", type=Path, default=REPO, help="run the daemon from this tree")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    out = sys.stdout
    out.write(f"machine: {machine()}\n\n")
    out.write("| database | messages | wall | msgs/s | start-up / ingest / drain | "
              "ingest msgs/s | peak RSS, largest process | peak RSS, all processes (each) | "
              "CPU | work orders / acks |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    with servers() as srv:
        for kind in args.db:
            for _ in range(args.runs):
                r = run_once(srv, kind, args.count, args.batch_size, overlap=args.overlap,
                             repo=args.repo)
                out.write(r.row() + "\n")
                out.flush()
                log.info("dispositions %s", r.dispositions)
        if args.profile:
            r = run_once(srv, "sqlite", args.count, args.batch_size, profile=args.profile,
                         overlap=args.overlap, repo=args.repo)
            out.write(r.row().replace("| sqlite", "| sqlite under py-spy") + "\n")
            log.info("profile written to %s", args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
