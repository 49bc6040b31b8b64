"""The ingest worker's mechanism (Popen, a socket pair, typed messages) against the standard
library's: what a child costs to start, to talk to, to restart, and in processes and memory.

    python bench/bench_worker_rpc.py [--count 1000] [--runs 3] [--repo TREE] [--echo 200]

Two parts, both bounded (about a minute each on a quiet 2-core machine):

- **the worker** (``--repo`` picks the tree whose ``triage.ingest.IngestWorker`` runs, so a
  variant can be measured beside this one): per run, on a fresh SQLite file, ``start()`` to
  ``wait_ready()`` (the child imports, loads the model, opens the database); the corpus
  (bench/corpus.py) stored in batches of 50 through ``IngestWorker.store`` (msgs/s); the
  processes under this one and their summed RSS while the child is loaded; then a SIGKILL of
  the child and one more batch (time to its answer: the respawn, the one-at-a-time retry).
- **the bare channel** (``--echo N``): one batch of 50 corpus messages as ``RawMessage`` in
  a ``StoreBatch`` sent to a child that answers with 50 ``Outcome``s, N times, over (a) the
  worker's own ``Popen`` + socket pair, (b) a spawned ``multiprocessing.Process`` + ``Pipe``,
  (c) a one-worker ``ProcessPoolExecutor`` (spawn); the round trip (min and median) and the
  processes each mechanism adds.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _tree(pid: int) -> tuple[int, float]:
    """(processes under ``pid``, their RSS in MB, ``pid`` excluded)."""
    from bench._rss import _kids

    kids, stack = [], _kids(pid)
    while stack:
        k = stack.pop()
        kids.append(k)
        stack += _kids(k)
    rss = 0.0
    for k in kids:
        try:
            for line in Path(f"/proc/{k}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) / 1024
        except OSError:
            pass
    return len(kids), rss


def worker_run(count: int) -> dict[str, float]:
    from bench.corpus import generate
    from classifiers.installed import best_model_path
    from triage.config import Settings
    from triage.ingest import IngestWorker
    from triage.messages import RawMessage

    corpus = list(generate(count))
    raws = [RawMessage("bench/INBOX", 1, str(i + 1), len(b), b) for i, b in enumerate(corpus)]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(database_url=f"sqlite:///{tmp}/w.db",
                            attachments_dir=Path(tmp) / "att")
        from triage.storage.engine import make_engine
        from triage.storage.migrate import upgrade

        engine = make_engine(settings.database_url)
        upgrade(engine)
        engine.dispose()
        model = best_model_path(settings.model_path, settings.retrained_model_dir)
        worker = IngestWorker(settings, model)
        t0 = time.perf_counter()
        worker.start()
        worker.wait_ready()
        start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for i in range(0, len(raws) - 50, 50):
            worker.store(raws[i:i + 50])
        stored = len(raws) - 50
        store_s = time.perf_counter() - t0
        procs, rss = _tree(os.getpid())
        assert worker.pid is not None
        os.kill(worker.pid, signal.SIGKILL)
        time.sleep(0.2)
        t0 = time.perf_counter()
        worker.store(raws[-50:])
        restart_s = time.perf_counter() - t0
        worker.close()
    return {"start_s": start_s, "msgs_per_s": stored / store_s, "procs": procs,
            "rss_mb": rss, "restart_s": restart_s}


# ---- the bare channel ---------------------------------------------------------------------------
def _answer(request: object) -> object:
    from triage.ingest import Stored
    from triage.workorders import Outcome

    batch = request.batch  # type: ignore[attr-defined]
    return Stored([Outcome(r.uid, "work_order") for r in batch])


def _serve(conn: Connection) -> None:
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        conn.send(_answer(request))


_POPEN_CHILD = ("import sys; from multiprocessing.connection import Connection; "
                "from bench.bench_worker_rpc import _serve; _serve(Connection(int(sys.argv[1])))")


def echo(n: int, batch: object) -> dict[str, tuple[tuple[float, float], int]]:
    out: dict[str, tuple[tuple[float, float], int]] = {}

    def rounds(call: object) -> tuple[float, float]:
        """(min, median) in ms: on a shared machine the minimum is the mechanism's cost."""
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            call()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return min(times) * 1000, statistics.median(times) * 1000

    # (a) Popen + socket pair: the worker's mechanism.
    ours, theirs = socket.socketpair()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", _POPEN_CHILD, str(theirs.fileno())],
                            pass_fds=(theirs.fileno(),), env=env)
    theirs.close()
    conn = Connection(ours.detach())

    def popen_call() -> object:
        conn.send(batch)
        return conn.recv()

    popen_call()
    procs = _tree(os.getpid())[0]
    out["Popen + socket pair"] = (rounds(popen_call), procs)
    conn.close()
    proc.wait(10)

    # (b) multiprocessing.Process (spawn) + Pipe.
    ctx = multiprocessing.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_serve, args=(b,), daemon=True)
    p.start()
    b.close()

    def mp_call() -> object:
        a.send(batch)
        return a.recv()

    mp_call()
    procs = _tree(os.getpid())[0]
    out["multiprocessing.Process + Pipe"] = (rounds(mp_call), procs)
    a.close()
    p.join(10)

    # (c) ProcessPoolExecutor, one worker (spawn).
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        pool.submit(_answer, batch).result()
        procs = _tree(os.getpid())[0]
        out["ProcessPoolExecutor"] = (rounds(lambda: pool.submit(_answer, batch).result()),
                                      procs)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--echo", type=int, default=0, help="round trips of the bare channel")
    ap.add_argument("--repo", type=Path, default=REPO, help="the tree whose worker runs")
    args = ap.parse_args()
    sys.path.insert(0, str(args.repo))
    os.environ["PYTHONPATH"] = str(args.repo)  # the worker's child imports the same tree
    sys.path.insert(1, str(REPO))
    print(f"tree {args.repo}")
    if args.runs:
        print("| run | start→ready | store, batches of 50 | processes | their RSS | kill → "
              "next batch answered |\n|---|---:|---:|---:|---:|---:|")
        for i in range(args.runs):
            r = worker_run(args.count)
            print(f"| {i + 1} | {r['start_s']:.2f} s | {r['msgs_per_s']:.0f} msgs/s | "
                  f"{r['procs']:.0f} | {r['rss_mb']:.0f} MB | {r['restart_s']:.2f} s |",
                  flush=True)
    if args.echo:
        from bench.corpus import generate
        from triage.ingest import StoreBatch
        from triage.messages import RawMessage

        raws = [RawMessage("bench/INBOX", 1, str(i + 1), len(b), b)
                for i, b in enumerate(generate(50))]
        batch = StoreBatch(raws)
        print(f"\necho: one batch of 50 ({sum(r.size for r in raws) / 1024:.0f} KB), "
              f"{args.echo} round trips\n\n| mechanism | round trip, min / median | processes |\n"
              "|---|---:|---:|")
        for name, ((low, mid), procs) in echo(args.echo, batch).items():
            print(f"| {name} | {low:.2f} / {mid:.2f} ms | {procs} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
