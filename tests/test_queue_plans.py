"""The queue page's per-row reads use the per-work-order indexes on SQLite, whatever the
size of the tables (its planner has no statistics until ANALYZE, so a condition on a column
with an index of its own can send it to the wrong one)."""

from pathlib import Path
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

from triage.desk.queue import client_replied
from triage.storage.engine import make_engine
from triage.storage.migrate import upgrade


def test_client_replied_reads_by_work_order_not_by_kind(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'plans.db'}")
    upgrade(engine)
    seen: list[tuple[str, Any]] = []

    def keep(conn: Any, cursor: Any, statement: str, params: Any, context: Any,
             executemany: bool) -> None:
        seen.append((statement, params))

    event.listen(engine, "before_cursor_execute", keep)
    wos = [SimpleNamespace(id=i, number=f"ITX-{i:06d}") for i in range(1, 51)]
    with Session(engine) as s:
        assert client_replied(s, wos) == set()  # type: ignore[arg-type]
    event.remove(engine, "before_cursor_execute", keep)
    outbox_reads = [(q, p) for q, p in seen if "FROM outbox" in q]
    assert outbox_reads, seen
    with engine.connect() as c:
        for q, p in outbox_reads:
            plan = " ".join(str(r[3]) for r in c.exec_driver_sql("EXPLAIN QUERY PLAN " + q, p))
            assert "ix_outbox_work_order_id" in plan, plan
    engine.dispose()
