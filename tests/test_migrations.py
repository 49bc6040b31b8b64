"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and
the newest one goes back down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from triage.storage.engine import make_engine
from triage.storage.migrate import alembic_config, upgrade
from triage.storage.models import Base


def _diff(engine) -> list[object]:
    with engine.connect() as c:
        ctx = MigrationContext.configure(c, opts={"compare_type": False})
        return list(compare_metadata(ctx, Base.metadata))


def test_migrations_match_the_models_and_step_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        assert _diff(engine) == []
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        assert _diff(engine) != []  # the newest revision did change something
        upgrade(engine)
        assert _diff(engine) == []
    finally:
        engine.dispose()
