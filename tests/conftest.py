"""Shared fixtures: a database URL for each backend (real SQLite file, real PostgreSQL)."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

pytest_plugins = ["tests.dovecot", "tests.smtpsink", "tests.oauthserver"]

PG_ADMIN_URL = os.environ.get(
    "TRIAGE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_available() -> str | None:
    try:
        eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        with eng.connect() as c:
            c.execute(text("select 1"))
        eng.dispose()
        return None
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"PostgreSQL not reachable at {PG_ADMIN_URL}: {type(e).__name__}"


@pytest.fixture(autouse=True)
def _no_fixed_ops_port(monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's ops endpoints default to port 9108; a test that wants them asks for a
    free port itself."""
    monkeypatch.setenv("TRIAGE_OPS_PORT", "0")


@pytest.fixture(scope="session")
def pg_reason() -> str | None:
    return _pg_available()


def _create_pg_db() -> tuple[str, str]:
    name = f"triage_test_{uuid.uuid4().hex[:12]}"
    eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with eng.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    eng.dispose()
    return name, PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _drop_pg_db(name: str) -> None:
    eng = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with eng.connect() as c:
        c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    eng.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database on each backend. In CI (CI=true) PostgreSQL must be there."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'triage.db'}"
        return
    with throwaway_pg_database() as url:
        yield url


@contextlib.contextmanager
def throwaway_pg_database() -> Iterator[str]:
    """A new PostgreSQL database, dropped afterwards. In CI (CI=true) PostgreSQL must be there."""
    reason = _pg_available()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name, url = _create_pg_db()
    try:
        yield url
    finally:
        _drop_pg_db(name)


@pytest.fixture
def pg_url() -> Iterator[str]:
    """For tests that are about PostgreSQL only."""
    with throwaway_pg_database() as url:
        yield url
