"""Alembic driven from code: ``triage db upgrade`` and the daemon's start-up both call
``upgrade``, so a fresh database and an old one reach the same schema the same way."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

from triage.lease import lease_key

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Several processes starting on one new database: one migrates, the others wait
            # for it (the lock ends with this transaction) and then find nothing to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"),
                         {"k": lease_key("triage-migrate")})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    log.info("database schema at %s", revision)


def cmd_upgrade(ns: argparse.Namespace) -> int:
    from triage.config import load_settings
    from triage.logs import configure_logging
    from triage.storage.engine import make_engine

    settings = load_settings(ns.config)
    configure_logging(settings.log_format, settings.log_level)
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    return 0
