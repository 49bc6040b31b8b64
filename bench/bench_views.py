"""Saved views' counts and bulk actions at 100,000 work orders (issue 19).

    python bench/bench_views.py [--count 100000] [--db sqlite postgresql] [--runs 30]
                                [--keep-sqlite PATH] [--keep-pg NAME]

For each database: seeded as ``bench/bench_web.py`` seeds it (same function, same sizes:
70 % resolved, six staff, 60 % of the worked-on active orders assigned), then, in process:
- the navigation of one user (``triage.desk.views.navigation``: "Mine", "Unassigned urgent"
  and five saved views), which every page computes, timed ``--runs`` times; each view alone;
- the two defaults again without migration 0017's index (dropped, timed, created again);
- a bulk assign of 50 rows and of 200 rows (``triage.desk.bulk.run_bulk``), each row its own
  transaction, with the versions a queue page would carry.
Medians and p90 in milliseconds; the machine is shared, so run it a few times.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_web import AT_RISK_FRACTION, STAFF, database, seed
from sqlalchemy import select, text

from triage.desk.actions import Desk, DeskConfig
from triage.desk.bulk import BulkAction, Target, run_bulk
from triage.desk.views import (
    filter_from_args,
    navigation,
    queue_total,
    save_view,
    user_views,
)
from triage.sla import load_policy
from triage.storage.engine import make_engine, make_read_sessionmaker, make_sessionmaker
from triage.storage.migrate import upgrade
from triage.storage.models import SavedView, User, WorkOrder

SAVED = {"Printers": {"type": "printer_setup"}, "Waiting": {"status": "waiting_client"},
         "Breached": {"sla": "breached"}, "Review": {"review": "yes"},
         "Bob urgent": {"assignee": STAFF[1], "priority": "urgent"}}
INDEX = "ix_work_orders_active_assignee"
INDEX_SQL = (f"CREATE INDEX {INDEX} ON work_orders (assignee_id, priority, status, "
             "request_type, needs_review, next_due, at_risk_at, number) "
             "WHERE status <> 'resolved'")


def timed(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    fn()  # warm
    ms = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1000)
    ms.sort()
    return statistics.median(ms), ms[min(len(ms) - 1, int(len(ms) * 0.9))]


def run_db(kind: str, args: argparse.Namespace) -> None:
    policy = load_policy()
    now = datetime.now(UTC)
    keep = args.keep_sqlite if kind == "sqlite" else args.keep_pg
    with database(kind, keep) as (url, seeded):
        engine = make_engine(url)
        upgrade(engine)
        if not seeded:
            s = seed(engine, policy, args.count, now, random.Random(5))
            print(f"[{kind}] seeded {len(s.numbers)} work orders in {s.seconds:.0f} s",
                  flush=True)
        sessions, reads = make_sessionmaker(engine), make_read_sessionmaker(engine)
        with sessions.begin() as s:
            alice = s.scalar(select(User.id).where(User.name == STAFF[0]))
            assert alice is not None
            s.execute(SavedView.__table__.delete().where(SavedView.user_id == alice))
            for name, filters in SAVED.items():
                save_view(s, alice, name, filters, policy)

        def nav() -> object:
            with reads() as r:
                return navigation(r, alice, STAFF[0], policy, now)

        with reads() as r:
            views = user_views(r, alice, STAFF[0])
        counts = {v.name: v.count for v in nav()}  # type: ignore[attr-defined]
        med, p90 = timed(nav, args.runs)
        print(f"[{kind}] navigation ({len(views)} views)     median {med:6.1f}  p90 {p90:6.1f} ms",
              flush=True)
        for v in views:
            f = filter_from_args(v.args, policy)

            def one(f: object = f) -> object:
                with reads() as r:
                    return queue_total(r, f, now)  # type: ignore[arg-type]
            med, p90 = timed(one, args.runs)
            print(f"[{kind}]   {v.name:18s} {counts[v.name]:6d}  median {med:6.2f}  "
                  f"p90 {p90:6.2f} ms", flush=True)
        with engine.begin() as c:
            c.execute(text(f"DROP INDEX {INDEX}"))
        try:
            for v in views[:2]:
                f = filter_from_args(v.args, policy)

                def without(f: object = f) -> object:
                    with reads() as r:
                        return queue_total(r, f, now)  # type: ignore[arg-type]
                med, p90 = timed(without, args.runs)
                print(f"[{kind}]   {v.name:18s} without {INDEX}: median {med:6.2f}  "
                      f"p90 {p90:6.2f} ms", flush=True)
        finally:
            with engine.begin() as c:
                c.execute(text(INDEX_SQL))
            if kind == "postgresql":
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                    c.execute(text("ANALYZE work_orders"))

        desk = Desk(sessions, policy, DeskConfig("helpdesk@itx.net", AT_RISK_FRACTION),
                    lambda: datetime.now(UTC))
        with reads() as r:
            rows = r.execute(select(WorkOrder.number, WorkOrder.version)
                             .where(WorkOrder.status != "resolved")
                             .order_by(WorkOrder.next_due).limit(250)).all()
        for n, who in ((50, STAFF[2]), (200, STAFF[3])):
            targets = [Target(number, version) for number, version in rows[:n]]
            t0 = time.perf_counter()
            result = run_bulk(desk, sessions, policy, STAFF[0], BulkAction("assign",
                                                                           assignee=who),
                              targets)
            ms = (time.perf_counter() - t0) * 1000
            print(f"[{kind}] bulk assign of {n:3d} rows: {ms:7.0f} ms ({ms / n:5.1f} ms/row), "
                  f"{result.done} done, {result.failed} not", flush=True)
            rows = r_after(reads, [t.number for t in targets]) + rows[n:]
        engine.dispose()


def r_after(reads: object, numbers: list[str]) -> list[tuple[str, int]]:
    """The rows' versions after a bulk action (the next one's page)."""
    with reads() as r:  # type: ignore[operator]
        got = dict(r.execute(select(WorkOrder.number, WorkOrder.version)
                             .where(WorkOrder.number.in_(numbers))).all())
    return [(n, got[n]) for n in numbers]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--db", nargs="+", default=["sqlite", "postgresql"],
                    choices=["sqlite", "postgresql"])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--keep-sqlite", default=None)
    ap.add_argument("--keep-pg", default=None)
    args = ap.parse_args()
    for kind in args.db:
        run_db(kind, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
