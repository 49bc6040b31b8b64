"""Where the outbox writes that a mail was delivered: the recorder interface and its two
implementations.

``InTable`` marks the row ``sent`` at once (PostgreSQL, where row locks let the sender
write beside ingestion). ``SideDatabase`` (SQLite) appends the delivery to a second SQLite
database beside the first and lets the next claim move it into the outbox table: SQLite has
one write lock per database, which ingestion holds for every batch it stores, and the
sender must record each answer before it hands over the next mail (bench/results.md,
"Issue 17 item 6").

How a deferred delivery stays correct:

- A delivered row stays ``sending`` in the outbox table, under its claim's lease, until the
  delivery is applied; a lease still running is never claimed again, so a row is not sent
  again while its delivery waits in the side database.
- Every claim applies pending deliveries first, inside its own write transaction
  (``OutboxStore.claim``); so does any process that might take a row whose lease ran out,
  and the daemon at shutdown (``OutboxStore.flush``).
- Applying is idempotent: a delivery updates its row only while it is still ``sending``
  under the same claim (the row's ``attempts``, which every claim counts up: not the
  lease's end, which a slow restart leaves in the past without another claim having taken
  the row), and adds its event only then. Applied deliveries are deleted from the side
  database after the outbox commit; a crash in between applies them again, to no effect.
- The side database is SQLite in WAL mode with ``synchronous=NORMAL``, as the main one: a
  committed delivery survives a crash of the daemon, not necessarily of the machine.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sqlalchemy import Connection, Engine, bindparam, insert, select, update

from triage.storage.engine import in_chunks
from triage.storage.models import Event, Outbox

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    outbox_id: int
    claimed_until: datetime  # the lease of the claim the delivery was made under
    at: datetime
    answer: str
    kind: str
    work_order_id: int | None
    attempt: int = 0  # the row's attempts after that claim: which claim it was


class Recorder(Protocol):
    # True: ``record`` leaves the outbox table to ``apply``, run by the next claim.
    deferred: ClassVar[bool]

    def record(self, engine: Engine, d: Delivery) -> None:
        """Record one delivery, durably, before the next mail is handed over."""

    def apply(self, c: Connection) -> Callable[[], None] | None:
        """Inside a write transaction on ``c``: move recorded deliveries into the outbox
        table. Returns what to run once that transaction has committed, if anything."""


# Built once: a statement built per call spends as long on its cache key as on the database.
_t = Outbox.__table__
_MARK_SENT = (update(_t)
              .where(_t.c.id == bindparam("r_id"), _t.c.status == "sending",
                     _t.c.claimed_until == bindparam("r_until"))
              .values(status="sent", sent_at=bindparam("r_now"), last_error=None,
                      claimed_until=None, smtp_response=bindparam("r_answer")))
# A deferred delivery: still ours if no other claim counted up ``attempts``.
_MARK_APPLIED = (update(_t)
                 .where(_t.c.id == bindparam("r_id"), _t.c.status == "sending",
                        _t.c.attempts == bindparam("r_attempt"))
                 .values(status="sent", sent_at=bindparam("r_now"), last_error=None,
                         claimed_until=None, smtp_response=bindparam("r_answer")))
_SENT_EVENT = insert(Event.__table__)


def _sent_event(d: Delivery) -> dict[str, Any]:
    """The ``ack_sent`` (or other kind's) event of a delivery, as ``_SENT_EVENT`` takes it."""
    return {"work_order_id": d.work_order_id, "actor": "system", "action": f"{d.kind}_sent",
            "detail": {"outbox": d.outbox_id}, "at": d.at}


class InTable:
    """The row marked ``sent`` in the delivery's own transaction."""

    deferred: ClassVar[bool] = False

    def record(self, engine: Engine, d: Delivery) -> None:
        with engine.begin() as c:
            # The lease check is in the UPDATE's WHERE, so no row is read first.
            mine = c.execute(_MARK_SENT, {"r_id": d.outbox_id, "r_until": d.claimed_until,
                                          "r_now": d.at, "r_answer": d.answer}).rowcount
            if mine == 1:
                c.execute(_SENT_EVENT, _sent_event(d))
                return
        log.warning("outbox row %s: lease lost before the result was recorded", d.outbox_id)

    def apply(self, c: Connection) -> None:
        return None


def apply_deliveries(c: Connection, deliveries: Sequence[Delivery]) -> int:
    """Deferred deliveries whose row is still ``sending`` under the same claim (the others
    were applied before, or another claim took the row), in three statements; the caller
    holds the write transaction, so what is read here cannot change under it."""
    by_id: dict[int, list[Delivery]] = {}
    for d in deliveries:
        by_id.setdefault(d.outbox_id, []).append(d)
    mine: list[Delivery] = []
    for chunk in in_chunks(by_id):
        for row_id, status, attempts in c.execute(
                select(Outbox.id, Outbox.status, Outbox.attempts).where(Outbox.id.in_(chunk))):
            if status == "sending":
                mine += [d for d in by_id[row_id] if d.attempt == attempts][:1]
    if mine:
        c.execute(_MARK_APPLIED, [{"r_id": d.outbox_id, "r_attempt": d.attempt,
                                   "r_now": d.at, "r_answer": d.answer} for d in mine])
        c.execute(_SENT_EVENT, [_sent_event(d) for d in mine])
    return len(mine)


_SCHEMA = """CREATE TABLE IF NOT EXISTS delivery (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    outbox_id INTEGER NOT NULL, claimed_until TEXT NOT NULL, at TEXT NOT NULL,
    answer TEXT NOT NULL, kind TEXT NOT NULL, work_order_id INTEGER, attempt INTEGER NOT NULL)"""


class SideDatabase:
    """Deliveries in ``<database>.deliveries``, a SQLite database of one table.

    ``seq`` is AUTOINCREMENT, never reused: a claim deletes what it applied by ``seq <=``
    the last one it read, so a delivery appended meanwhile, by any process, is kept."""

    deferred: ClassVar[bool] = True

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # One connection, used by one thread at a time: records and claims run in the
        # outbox thread, a shutdown flush in another.
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    @classmethod
    def beside(cls, database: Path) -> SideDatabase:
        return cls(database.with_name(database.name + ".deliveries"))

    def record(self, engine: Engine, d: Delivery) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO delivery (outbox_id, claimed_until, at, answer, kind, "
                "work_order_id, attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (d.outbox_id, d.claimed_until.isoformat(), d.at.isoformat(), d.answer,
                 d.kind, d.work_order_id, d.attempt))

    def pending(self) -> tuple[list[Delivery], int]:
        """Every delivery recorded and not yet released, and the last ``seq`` read."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, outbox_id, claimed_until, at, answer, kind, work_order_id, "
                "attempt FROM delivery ORDER BY seq").fetchall()
        return ([Delivery(r[1], datetime.fromisoformat(r[2]), datetime.fromisoformat(r[3]),
                          r[4], r[5], r[6], r[7]) for r in rows],
                rows[-1][0] if rows else 0)

    def release(self, upto: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM delivery WHERE seq <= ?", (upto,))

    def apply(self, c: Connection) -> Callable[[], None] | None:
        deliveries, upto = self.pending()
        if not deliveries:
            return None
        apply_deliveries(c, deliveries)
        return lambda: self.release(upto)

    def close(self) -> None:
        with self._lock:
            self._db.close()


def recorder_for(engine: Engine) -> Recorder:
    """A side database beside a SQLite file; the table itself for PostgreSQL (and for an
    in-memory SQLite, which has no file to put one beside)."""
    url = engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return InTable()
    return SideDatabase.beside(Path(url.database).resolve())


__all__ = ["Delivery", "InTable", "Recorder", "SideDatabase", "apply_deliveries",
           "recorder_for"]
