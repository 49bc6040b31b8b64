"""Engine and sessions. Synchronous SQLAlchemy run off the event loop in a worker thread:
PERF-NOTES measured the async SQLite driver 4.7x slower per commit, and the sync engine
keeps Alembic and PostgreSQL's ``FOR UPDATE SKIP LOCKED`` straightforward."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own transaction handling breaks SAVEPOINT; SQLAlchemy's recipe takes over:
    # autocommit at the driver, BEGIN emitted by us (IMMEDIATE: writers queue on busy_timeout
    # instead of failing on a lock upgrade).
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


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
    # Writers take the lock up front (IMMEDIATE), so two writers queue on busy_timeout instead
    # of one failing on a lock upgrade; readers keep WAL's concurrency with a plain BEGIN.
    readonly = conn.get_execution_options().get("triage_readonly", False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that write."""
    return sessionmaker(engine, expire_on_commit=False)


def make_read_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that only read: on SQLite they never wait for a writer."""
    return sessionmaker(engine.execution_options(triage_readonly=True), expire_on_commit=False)
