"""full-text search over the subjects and bodies of the mail on work orders

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 10:00:00

SQLite: an FTS5 table ``message_search`` (porter stemming over unicode61, diacritics
folded), one row per message that belongs to a work order, its rowid the message's id; kept
by triggers on ``messages`` (insert, a change of ``work_order_id`` as when screened mail is
opened as a work order, delete), so the bulk Core inserts of the ingest path index without a
line of Python. It holds its own copy of the text (the first 100,000 characters of a body).

PostgreSQL: a stored generated ``tsvector`` column ``messages.search_vector`` (English
stemming; subject weighted A, body B) and a GIN index on it.

Neither is in the SQLAlchemy models (they are one dialect's objects each);
``triage.desk.search.SEARCH_OBJECTS`` names them for the schema comparison.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

BODY_CHARS = 100_000


def _columns(p: str) -> str:
    """The indexed values of message ``p`` (``new`` in a trigger, a table alias otherwise);
    the highlight markers (\\x02, \\x03, triage.desk.search) are removed from the text."""
    return (f"{p}.id, {p}.subject, replace(replace(substr({p}.body_text, 1, {BODY_CHARS}), "
            f"char(2), ''), char(3), ''), {p}.work_order_id")


_INSERT = "INSERT INTO message_search(rowid, subject, body, work_order_id) "


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        op.execute("CREATE VIRTUAL TABLE message_search USING fts5(subject, body, "
                   "work_order_id UNINDEXED, "
                   "tokenize = 'porter unicode61 remove_diacritics 2')")
        op.execute("CREATE TRIGGER message_search_insert AFTER INSERT ON messages "
                   "WHEN new.work_order_id IS NOT NULL BEGIN "
                   f"{_INSERT} VALUES ({_columns('new')}); END")
        op.execute("CREATE TRIGGER message_search_move AFTER UPDATE OF work_order_id "
                   "ON messages BEGIN DELETE FROM message_search WHERE rowid = old.id; "
                   f"{_INSERT} SELECT {_columns('new')} WHERE new.work_order_id IS NOT NULL; "
                   "END")
        op.execute("CREATE TRIGGER message_search_delete AFTER DELETE ON messages "
                   "BEGIN DELETE FROM message_search WHERE rowid = old.id; END")
        op.execute(f"{_INSERT} SELECT {_columns('m')} FROM messages m "
                   "WHERE m.work_order_id IS NOT NULL")
    else:
        op.execute(
            "ALTER TABLE messages ADD COLUMN search_vector tsvector GENERATED ALWAYS AS ("
            "setweight(to_tsvector('english', coalesce(subject, '')), 'A') || "
            f"setweight(to_tsvector('english', left(coalesce(body_text, ''), {BODY_CHARS})), "
            "'B')) STORED")
        op.execute("CREATE INDEX ix_messages_search ON messages USING gin (search_vector)")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("message_search_insert", "message_search_move",
                        "message_search_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS message_search")
    else:
        op.execute("DROP INDEX IF EXISTS ix_messages_search")
        op.execute("ALTER TABLE messages DROP COLUMN IF EXISTS search_vector")
