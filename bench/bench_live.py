"""The live queue's poll at 100,000 work orders: what one ``/api/v1/changes`` request costs
on SQLite and PostgreSQL, beside the queue page it saves reloading.

    python bench/bench_live.py [--count 100000] [--db sqlite postgresql] [--requests 200]
                               [--changed 50]

Seeded as ``bench/bench_web.py`` seeds; then ``--changed`` work orders are given an
``updated_at`` within the last two minutes (a busy desk: that many changes inside the poll's
overlap, all of which every poll lists again). Timed through the real app under uvicorn,
signed in, one request at a time after a warm-up: the first poll (cursor only), a steady poll
from the newest cursor, and the queue page. Prints the database's plan for the poll's query.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bench_web
from sqlalchemy import bindparam, select, text, update

from triage.desk.live import LIMIT, OVERLAP
from triage.sla import load_policy
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade
from triage.storage.models import WorkOrder


def run_db(kind: str, args: argparse.Namespace) -> list[bench_web.Timing]:
    rng = random.Random(7)
    out: list[bench_web.Timing] = []
    now = datetime.now(UTC)
    with bench_web.database(kind, None) as (url, _):
        engine = make_engine(url)
        upgrade(engine)
        s = bench_web.seed(engine, load_policy(), args.count, now, rng)
        print(f"[{kind}] seeded {len(s.numbers)} work orders in {s.seconds:.0f} s", flush=True)
        changed = rng.sample(s.numbers, args.changed)
        with engine.begin() as c:
            c.execute(update(WorkOrder).where(WorkOrder.number == bindparam("n"))
                      .values(updated_at=bindparam("t")),
                      [{"n": n, "t": now - timedelta(seconds=i)} for i, n in enumerate(changed)])
            if kind == "postgresql":
                c.execute(text("ANALYZE work_orders"))
        with engine.connect() as c:
            since = now - OVERLAP
            sql = ("SELECT updated_at, number, version FROM work_orders WHERE updated_at > "
                   f"{'%(t)s' if kind == 'postgresql' else '?'} ORDER BY updated_at DESC "
                   f"LIMIT {LIMIT + 1}")
            explain = "EXPLAIN " if kind == "postgresql" else "EXPLAIN QUERY PLAN "
            raw = c.connection.driver_connection
            assert raw is not None
            cur = raw.cursor()
            cur.execute(explain + sql, {"t": since} if kind == "postgresql"
                        else (since.replace(tzinfo=None).isoformat(" "),))
            print(f"[{kind}] plan:", *(" ".join(str(x) for x in row) for row in cur.fetchall()),
                  sep="\n    ", flush=True)
            assert c.scalar(select(WorkOrder.id).limit(1)) is not None
        engine.dispose()
        with bench_web.signed_in(url) as (client, pid):
            first = client.get("/api/v1/changes").json()
            steady = client.get("/api/v1/changes", params={"since": first["cursor"]}).json()
            print(f"[{kind}] a steady poll lists {len(steady['work_orders'])} work orders",
                  flush=True)
            since_q = "/api/v1/changes?since=" + first["cursor"].replace("+", "%2B")
            for page, path in (("poll", "/api/v1/changes"), ("poll", since_q),
                               ("queue", "/queue")):
                t = bench_web.timed(client, pid, kind, page, path, path[:60], args)
                out.append(t)
                print(f"[{kind}] {path[:60]:60s} median {t.median:6.1f}  p90 {t.pct(90):6.1f}"
                      f"  p99 {t.pct(99):6.1f} ms  server CPU {t.cpu_ms:5.1f} ms/req  "
                      f"{t.size} bytes", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--changed", type=int, default=50)
    args = ap.parse_args()
    bench_web.TARGETS_MS["poll"] = 20.0
    timings: list[bench_web.Timing] = []
    for kind in args.db:
        timings += run_db(kind, args)
    print()
    print(f"{args.count} work orders, {args.changed} changed in the last two minutes, "
          f"{args.requests} timed requests per row after {args.warmup} warm-up; "
          f"{os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(bench_web.table(timings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
