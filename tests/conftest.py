"""Shared fixtures: a database URL for each backend (real SQLite file, real PostgreSQL), the
trained classifier, and a daemon ``Service`` on the real Dovecot and SMTP sink. Plain
helpers are in ``tests/factories.py``; the other fixtures in the plugins below: the servers
(Dovecot, SMTP sink, OAuth), the desk and its web app, daemons run as subprocesses, small
trained models, and the browser."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from classifiers.predict import Classifier
from triage.config import Settings
from triage.service import Service
from triage.wiring import build

pytest_plugins = ["tests.dovecot", "tests.smtpsink", "tests.oauthserver", "tests.deskenv",
                  "tests.daemons", "tests.models", "tests.browser"]

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


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order and group the tests for pytest-xdist (``scripts/test.sh`` runs ``-n 4 --dist
    loadgroup``): most tests wait on servers, not the CPU, so four workers share two cores well.

    A module whose tests share a module-scoped fixture (a built image, a seeded browser site)
    runs on one worker, so the fixture is made once; every other test goes to whichever
    worker is free. Modules with a ``slow`` test start first, so the longest work does not
    begin last. The order within a module is kept; without xdist only the order changes.
    """
    def shares_module_fixture(item: pytest.Item) -> bool:
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        return any(d[-1].scope in ("module", "package", "class") for d in defs if d)

    grouped = {item.module.__name__ for item in items  # type: ignore[attr-defined]
               if shares_module_fixture(item)}
    slow = {item.module.__name__ for item in items  # type: ignore[attr-defined]
            if item.get_closest_marker("slow")}
    for item in items:
        module = item.module.__name__  # type: ignore[attr-defined]
        if module in grouped:
            item.add_marker(pytest.mark.xdist_group(module))
    items.sort(key=lambda item: item.module.__name__ not in slow)  # type: ignore[attr-defined]


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


@pytest.fixture(scope="session")
def classifier() -> Classifier:
    """The shipped model, loaded once for the run (read only)."""
    return Classifier.load()


@pytest.fixture
def make_service(db_url: str, tmp_path: Path, dovecot: Any, smtp_sink: Any,
                 classifier: Classifier) -> Iterator[Callable[..., Service]]:
    """``make_service(**settings)``: a ``Service`` on the test's Dovecot, SMTP sink and
    database (both backends); its engine is disposed at the end."""
    made: list[Service] = []

    def make(**overrides: object) -> Service:
        clf = overrides.pop("classifier", classifier)
        values: dict[str, object] = dict(
            mailbox_url=f"imap+plain://{dovecot.user}@127.0.0.1:{dovecot.port}/INBOX",
            mailbox_password=dovecot.password,
            smtp_url=smtp_sink.url,
            database_url=db_url,
            attachments_dir=tmp_path / "att",
            outbox_retry_base=0.0,
            poll_interval=2.0,
        )
        settings = Settings(**{**values, **overrides})  # type: ignore[arg-type]
        svc = Service(settings, build(settings, classifier=clf))  # type: ignore[arg-type]
        made.append(svc)
        return svc

    yield make
    for svc in made:
        svc.c.engine.dispose()
