"""The queue's full-text search at 100,000 work orders (issue 19): the search page's
latency on SQLite (FTS5) and PostgreSQL (tsvector + GIN).

    python bench/bench_search.py [--count 100000] [--db sqlite postgresql] [--requests 100]
                                 [--warmup 10] [--keep-sqlite PATH] [--keep-pg NAME]

The database is seeded as ``bench/bench_web.py`` seeds it (the same work orders, messages,
outbox rows and events, through the same Core inserts, so the search index is built by the
migration's triggers or generated column as in production), except that bodies also carry
words of three rarities, so queries of every selectivity can be timed: ``model<N>`` (100
values: about 1 % of messages each), ``ticket<N>`` (20,000 values: a handful each) beside
bench_web's 41-word vocabulary (each word in most bodies: the worst case, since every match
is ranked). Each query is timed through the real app under uvicorn, signed in, one request
at a time after a warm-up; the default status filter (active work orders) and ``status=all``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_web
from sqlalchemy import func, select

from triage.sla import load_policy
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade
from triage.storage.models import WorkOrder

TARGET_MS = 100.0
QUERIES = ("printer", "printer vpn", "model42", "ticket12345", "printer&status=all",
           "model42&status=all", "ticket12345&status=all", "nosuchword")


def rare_words(rng: random.Random) -> None:
    """bench_web's bodies, each with a medium-rare and a rare word added."""
    plain = bench_web.body

    def body(r: random.Random, chars: int) -> str:
        text = plain(r, chars)
        return (text + f" Model{rng.randrange(100)} ticket{rng.randrange(20_000)} "
                "reported.\n")

    bench_web.body = body  # type: ignore[assignment]


def run_db(kind: str, args: argparse.Namespace) -> list[bench_web.Timing]:
    rng = random.Random(7)
    keep = args.keep_sqlite if kind == "sqlite" else args.keep_pg
    out: list[bench_web.Timing] = []
    with bench_web.database(kind, keep) as (url, seeded):
        engine = make_engine(url)
        upgrade(engine)
        if not seeded:
            s = bench_web.seed(engine, load_policy(), args.count, datetime.now(UTC), rng)
            print(f"[{kind}] seeded {len(s.numbers)} work orders in {s.seconds:.0f} s",
                  flush=True)
        with engine.connect() as c:
            total = c.scalar(select(func.count()).select_from(WorkOrder))
        print(f"[{kind}] {total} work orders", flush=True)
        engine.dispose()
        with bench_web.signed_in(url) as (client, pid):
            for q in QUERIES:
                words, _, rest = q.partition("&")
                path = "/queue?q=" + words.replace(" ", "+") + (f"&{rest}" if rest else "")
                first = client.get(path)
                first.raise_for_status()
                found = first.text.split('<p class="summary">', 1)[1].split(" ", 1)[0]
                t = bench_web.timed(client, pid, kind, "search", path, path, args)
                out.append(t)
                print(f"[{kind}] {path:40s} {found:>7s} found  median {t.median:7.1f}  "
                      f"p90 {t.pct(90):7.1f}  p99 {t.pct(99):7.1f} ms  "
                      f"server CPU {t.cpu_ms:6.1f} ms/req  load {t.load:.1f}", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--requests", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--keep-sqlite", default=None, metavar="PATH")
    ap.add_argument("--keep-pg", default=None, metavar="NAME")
    args = ap.parse_args()
    rare_words(random.Random(11))
    bench_web.TARGETS_MS["search"] = TARGET_MS
    timings: list[bench_web.Timing] = []
    for kind in args.db:
        timings += run_db(kind, args)
    print()
    print(f"{args.count} work orders, {args.requests} timed requests per row after "
          f"{args.warmup} warm-up; {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(bench_web.table(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
