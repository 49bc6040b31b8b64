"""Cost of the enqueue-time rate limits (migration 0009, triage.store.context).

    python bench/bench_rate_keys.py [--rows 100000] [--db sqlite postgresql]

On a fresh database at revision 0008 an outbox of ``--rows`` acknowledgments (2,000
senders in 400 domains, created over the last two hours) is written; then:

- migration: ``upgrade`` to 0009, which adds ``to_key``/``to_domain``, fills them in Python
  for every row and builds the three indexes (seconds for all rows);
- lookup: the acknowledgment counts of one batch of 50 senders as the store looks them up
  (``_add_senders``: per normalised address, per domain, in all; median of 20 batches);
- the same counts the way the store counted before (per exact ``to_addr``), for scale.

Prints one line per database; the figures go to bench/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import column, func, insert, select, table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._servers import database
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade
from triage.storage.models import Outbox
from triage.store.context import BatchContext, _add_senders

NOW = datetime.now(UTC)


def senders(n: int) -> list[str]:
    return [f"user{i}.x+tag{i % 3}@client{i % 400}.example" for i in range(n)]


def fill(engine, rows: int) -> None:
    t = table("outbox", *(column(c.key, c.type) for c in Outbox.__table__.columns
                          if c.key not in ("id", "to_key", "to_domain")))
    people = senders(2000)
    with engine.begin() as conn:
        for start in range(0, rows, 5000):
            conn.execute(insert(t), [dict(
                kind="ack", work_order_id=None, to_addr=people[i % len(people)],
                message_id=f"b{i}@itx.net", template="ack/x", context={}, status="sent",
                attempts=1, next_attempt_at=NOW, claimed_until=None, last_error=None,
                smtp_response=None, sent_at=NOW,
                created_at=NOW - timedelta(seconds=(i * 7200) // rows))
                for i in range(start, min(rows, start + 5000))])


def run(kind: str, rows: int) -> str:
    with tempfile.TemporaryDirectory(prefix="bench-rate-") as tmp, \
            database(kind, Path(tmp)) as url:
        engine = make_engine(url)
        try:
            upgrade(engine, "0008")
            fill(engine, rows)
            t0 = time.perf_counter()
            upgrade(engine)
            migrate_s = time.perf_counter() - t0
            people = senders(2000)
            new, old = [], []
            for b in range(20):
                group = people[b * 50:(b + 1) * 50]
                with engine.connect() as conn:
                    t0 = time.perf_counter()
                    _add_senders(BatchContext(), conn, group, NOW)
                    new.append(time.perf_counter() - t0)
                    t0 = time.perf_counter()
                    conn.execute(select(Outbox.to_addr, func.count(Outbox.id))
                                 .where(Outbox.kind == "ack", Outbox.to_addr.in_(group),
                                        Outbox.created_at > NOW - timedelta(hours=1))
                                 .group_by(Outbox.to_addr)).all()
                    old.append(time.perf_counter() - t0)
        finally:
            engine.dispose()
    return (f"{kind}: {rows:,} outbox rows; migration 0009 {migrate_s:.1f} s; counts of a "
            f"50-sender batch {statistics.median(new) * 1000:.1f} ms (address, domain, all; "
            f"with the clients lookup) vs {statistics.median(old) * 1000:.1f} ms by exact "
            f"to_addr only")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"])
    args = ap.parse_args()
    for kind in args.db:
        print(run(kind, args.rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
