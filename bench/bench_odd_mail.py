"""Odd mail with pathological headers (issue 14 item 2): memory and time, bounded?

    python bench/bench_odd_mail.py [--copies 4] [--reference]

1. parse: each kind of message alone, in this process: seconds and the peak of Python
   memory (tracemalloc) of ``triage.parse.parse``.
2. daemon: all of them (``--copies`` of each kind, unique Message-IDs, plus as many normal
   requests) in a Maildir, ``python -m triage run --once`` with its ingest worker, SQLite, the
   outbox to a directory; peak RSS of daemon plus worker (sum, sampled from /proc every
   50 ms), wall time and worker CPU time per message.
3. ``--reference``: the stdlib ``policy.default`` parse of the To value alone, in a fresh
   interpreter (what ``triage.parse`` did with it before the bounds): seconds and peak RSS.

Prints one JSON document; the figures go to bench/results.md.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._rss import TreeRss
from tests.hostile_corpus import _body, _head, address_header, encoded_word
from triage.parse import parse

REPO = Path(__file__).resolve().parent.parent

def _extra(n: int, extra: str, **head: str) -> bytes:
    h, _ = _head(n, mid=f"odd{n}@bench.test", extra=extra, **head)
    return (h + "\r\n" + _body(n, random.Random(n)) + "\r\n").encode()


def _with_to(n: int, *, count: int) -> bytes:
    h, _ = _head(n, mid=f"odd{n}@bench.test")
    h = h.replace("To: helpdesk@itx.net\r\n", address_header(count))
    return (h + "\r\n" + _body(n, random.Random(n)) + "\r\n").encode()


# kind -> maker(n) -> raw bytes. Sizes span the 135 KB and 391 KB messages.
KINDS = {
    **{f"to-{count}": functools.partial(_with_to, count=count)
       for count in (1000, 2850, 6000, 12_000, 20_000)},
    "cc-20-fields-of-300": lambda n: _extra(n, address_header(300, "Cc") * 20),
    "from-name-3000-words": lambda n: _extra(n, "", frm=" ".join(
        encoded_word(i) for i in range(3000)) + f" <c{n}@odd.test>"),
    "20000-fields": lambda n: b"".join(
        f"X-Junk-{i}: {encoded_word(i)}\r\n".encode() for i in range(20_000)) + _extra(n, ""),
    "subject-8000-words": lambda n: _extra(n, "", subject=" ".join(
        encoded_word(i) for i in range(8000))),
    "content-type-20000-params": lambda n: _extra(n, "", ctype="text/plain; " + "; ".join(
        f'p{i}="=?utf-8?q?v{i}?="' for i in range(20_000))),
}


def _normal(n: int) -> bytes:
    h, _ = _head(n, mid=f"odd{n}@bench.test")
    return (h + "\r\n" + _body(n, random.Random(n)) + "\r\n").encode()


def parse_figures() -> dict[str, dict[str, float]]:
    out = {}
    for i, (kind, make) in enumerate(KINDS.items()):
        raw = make(i)
        parse(raw)  # warm: imports, caches
        tracemalloc.start()
        t = time.perf_counter()
        p = parse(raw)
        seconds = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        t = time.perf_counter()
        parse(raw)  # timed again without tracemalloc's overhead
        out[kind] = {"kb": round(len(raw) / 1024), "parse_s": round(time.perf_counter() - t, 4),
                     "parse_s_traced": round(seconds, 4), "peak_mb": round(peak / 2**20, 1),
                     "defects": len(p.defects)}
    return out


REFERENCE = """
import email.policy, resource, sys, time
sys.path.insert(0, {repo!r})
from tests.hostile_corpus import address_header
value = address_header({count}).split(": ", 1)[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
str(email.policy.default.header_fetch_parse("To", value))
print(time.perf_counter() - t, before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def reference_figures() -> dict[str, dict[str, float]]:
    out = {}
    for count in (1000, 2850, 6000):
        r = subprocess.run([sys.executable, "-c", REFERENCE.format(repo=str(REPO), count=count)],
                           capture_output=True, text=True, check=True)
        seconds, before, after = r.stdout.split()
        out[f"to-{count}"] = {"seconds": round(float(seconds), 3),
                              "rss_before_mb": round(int(before) / 1024),
                              "rss_peak_mb": round(int(after) / 1024)}
    return out


def daemon_figures(copies: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-odd-") as tmp:
        work = Path(tmp)
        inbox = work / "inbox"
        for sub in ("new", "cur", "tmp"):
            (inbox / sub).mkdir(parents=True)
        n = 0
        total = 0
        for _ in range(copies):
            for make in (*KINDS.values(), *([_normal] * len(KINDS))):
                n += 1
                data = make(n)
                total += len(data)
                (inbox / "new" / f"{n:05d}.odd.bench").write_bytes(data)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")} | {
            "TRIAGE_MAILBOX_URL": f"maildir://{inbox}",
            "TRIAGE_SMTP_URL": f"dir://{work / 'outbox'}",
            "TRIAGE_DATABASE_URL": f"sqlite:///{work / 'odd.db'}",
            "TRIAGE_ATTACHMENTS_DIR": str(work / "att"),
            "TRIAGE_OPS_PORT": "0",
            "TRIAGE_LOG_LEVEL": "WARNING",
            "PYTHONPATH": str(REPO),
        }
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "triage", "run", "--once"], env=env,
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
        with TreeRss(proc.pid, interval=0.05) as tree:
            _, stderr = proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"daemon exited {proc.returncode}: {stderr[-2000:]}")
        import sqlite3

        with sqlite3.connect(work / "odd.db") as db:
            disp = dict(db.execute("select disposition, count(*) from messages "
                                   "where direction = 'in' group by disposition").fetchall())
        workers = [pid for pid, name in tree.names.items() if "_child_entry" in name]
        worker_cpu = sum(tree.cpu_s.get(pid, 0.0) for pid in workers)
        return {"messages": n, "mb_on_disk": round(total / 2**20, 1),
                "peak_rss_sum_mb": round(tree.peak_sum_mb),
                "peak_pss_sum_mb": round(tree.peak_pss_sum_mb),
                "peak_rss_each_mb": [round(p) for p in tree.python_peaks_mb()],
                "worker_peak_rss_mb": round(max((tree.peak_kb[p] for p in workers),
                                                default=0) / 1024),
                "workers_started": len(workers), "wall_s": round(wall, 2),
                "worker_cpu_ms_per_message": round(1000 * worker_cpu / n, 1),
                "dispositions": disp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--copies", type=int, default=4, help="messages of each kind (default 4)")
    ap.add_argument("--reference", action="store_true",
                    help="also the unbounded stdlib parse of 1,000-6,000 encoded words")
    args = ap.parse_args()
    out: dict[str, object] = {"parse": parse_figures(), "daemon": daemon_figures(args.copies)}
    if args.reference:
        out["reference_stdlib"] = reference_figures()
    out["bench_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
