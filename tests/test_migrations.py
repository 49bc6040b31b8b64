"""The migrations build exactly the schema the models describe, on SQLite and PostgreSQL, and
the newest one goes back down and up again."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from triage.desk.search import is_search_object
from triage.storage.engine import make_engine
from triage.storage.migrate import alembic_config, upgrade
from triage.storage.models import Base


def _models_only(name, type_, parent_names) -> bool:  # type: ignore[no-untyped-def]
    """Full-text search objects are one dialect's each and not in the models (0013)."""
    return not is_search_object(name)


def _diff(engine, *, models_only: bool = True) -> list[object]:
    opts = {"compare_type": False, **({"include_name": _models_only} if models_only else {})}
    with engine.connect() as c:
        ctx = MigrationContext.configure(c, opts=opts)
        return list(compare_metadata(ctx, Base.metadata))


def test_migrations_match_the_models_and_step_down_and_up(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        assert _diff(engine) == []
        whole = repr(_diff(engine, models_only=False))
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "-1")
        # The newest revision did change something (maybe only objects the models omit).
        assert repr(_diff(engine, models_only=False)) != whole
        upgrade(engine)
        assert _diff(engine) == []
    finally:
        engine.dispose()
