"""outbox rate keys: acknowledgments counted per normalised address, per domain and in all

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 09:00:00

The rate limits count one mailbox once however it is spelt (``victim+1@``, ``"victim"@``,
``victim@domain.``, ``vic.tim@``): ``to_key`` is the normalised address and ``to_domain``
its domain (``triage.outbox.enqueue.rate_columns``), each counted with a grouped query over
the last hour's acknowledgments, and ``(kind, created_at)`` serves the count of all of them.
``kind`` is in the key indexes too, so they answer the whole condition: with
``(to_key, created_at)`` alone SQLite's planner took ``(kind, created_at)`` and read every
acknowledgment of the hour for each batch (bench/bench_rate_keys.py).

Rows written before get their keys here, in Python, with the normaliser the store uses, so
that every row means the same thing and the count needs no second query by exact
``to_addr`` for old rows. Only the last hour's rows are ever counted, so keys a later
normaliser would spell differently matter for an hour at most. Unparseable addresses keep
NULL (the address policy refuses them; nothing counts under them).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

BATCH = 2000


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("to_key", sa.String(length=320), nullable=True))
        batch_op.add_column(sa.Column("to_domain", sa.String(length=255), nullable=True))
    _backfill()
    op.create_index("ix_outbox_to_key_kind_created", "outbox", ["to_key", "kind", "created_at"])
    op.create_index("ix_outbox_to_domain_kind_created", "outbox",
                    ["to_domain", "kind", "created_at"])
    op.create_index("ix_outbox_kind_created", "outbox", ["kind", "created_at"])


def _backfill() -> None:
    from triage.outbox.enqueue import rate_columns

    conn = op.get_bind()
    t = sa.table("outbox", sa.column("id", sa.Integer), sa.column("to_addr", sa.String),
                 sa.column("to_key", sa.String), sa.column("to_domain", sa.String))
    set_keys = (sa.update(t).where(t.c.id == sa.bindparam("row_id"))
                .values(to_key=sa.bindparam("new_key"), to_domain=sa.bindparam("new_domain")))
    last = 0
    while True:  # by id, BATCH rows at a time: ends when a page comes back empty
        page = conn.execute(sa.select(t.c.id, t.c.to_addr).where(t.c.id > last)
                            .order_by(t.c.id).limit(BATCH)).all()
        if not page:
            return
        values = []
        for row_id, to_addr in page:
            key, domain = rate_columns(to_addr or "")
            if key is not None:
                values.append({"row_id": row_id, "new_key": key, "new_domain": domain})
        if values:
            conn.execute(set_keys, values)
        last = page[-1][0]


def downgrade() -> None:
    op.drop_index("ix_outbox_kind_created", table_name="outbox")
    op.drop_index("ix_outbox_to_domain_kind_created", table_name="outbox")
    op.drop_index("ix_outbox_to_key_kind_created", table_name="outbox")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("to_domain")
        batch_op.drop_column("to_key")
