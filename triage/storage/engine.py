"""Engine and sessions. Synchronous SQLAlchemy run off the event loop in a worker thread:
PERF-NOTES measured the async SQLite driver 4.7x slower per commit, and the sync engine
keeps Alembic and PostgreSQL's ``FOR UPDATE SKIP LOCKED`` straightforward."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; SQLAlchemy's recipe takes over:
    # autocommit at the driver, BEGIN emitted by us (IMMEDIATE: writers queue on busy_timeout
    # instead of failing on a lock upgrade).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    # What any statement may wait for a lock; writers wait for theirs in _sqlite_begin.
    cur.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
    cur.close()


IN_CHUNK = 500  # values per IN (...) list: far below SQLite's 32,766 bound parameters


def in_chunks(values: Iterable[T]) -> list[list[T]]:
    """``values`` in lists short enough for one ``IN (...)`` each."""
    seq = list(values)
    return [seq[i : i + IN_CHUNK] for i in range(0, len(seq), IN_CHUNK)]


LOCK_WAIT_S = 10.0  # how long a writer waits for SQLite's write lock before failing
_BUSY_TIMEOUT_MS = int(LOCK_WAIT_S * 1000)


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL + NORMAL sync, and its folder is created."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        # hide_parameters: a failed statement's message must not carry a mail body to logs.
        engine = create_engine(u, connect_args={"timeout": 10}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    return create_engine(u, pool_pre_ping=True, pool_size=5, max_overflow=5,
                         hide_parameters=True)


def _sqlite_begin(conn: Connection) -> None:
    """Writers take the lock up front (IMMEDIATE), so two writers queue instead of one failing
    on a lock upgrade; readers keep WAL's concurrency with a plain BEGIN.

    A writer waits up to ``LOCK_WAIT_S``, retrying every ~1 ms. SQLite's own busy handler
    (busy_timeout=10000) sleeps 1, 2, 5, 10, 15, 20, 25, 25 ... ms between tries, so a writer
    that met a 40 ms transaction (a batch stored by the ingest worker) slept ~53 ms, and the
    outbox, which records every sent mail in its own short transaction, lost about half its
    rate to those oversleeps while ingestion ran (bench/results.md).
    """
    if conn.get_execution_options().get("triage_readonly", False):
        conn.exec_driver_sql("BEGIN")
        return
    raw = conn.connection.dbapi_connection
    assert raw is not None
    deadline = time.monotonic() + LOCK_WAIT_S
    raw.execute("PRAGMA busy_timeout=1")  # one ~1 ms wait per try, for the loop below
    try:
        while time.monotonic() < deadline:
            try:
                raw.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    break  # not a wait: SQLAlchemy's error below says what it is
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # once more, so a failure is SQLAlchemy's
    finally:
        raw.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that write."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite they never wait for a writer."""
    return sessionmaker(engine.execution_options(triage_readonly=True), expire_on_commit=False)
