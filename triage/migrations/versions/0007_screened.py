"""screened: who screened a message out and why, for the staff's Screened view

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 09:00:00

``messages.reason`` held only the non-request kind; staff judging a screening need the
deciding header or the model's confidence and words, kept in ``screening`` (JSON), and the
navigation counts text-model screenings by ``screened_by``. Rows stored before this keep
NULL in both (the view then shows the kind alone). The index serves the view's
``disposition IN (...) ORDER BY received_at DESC`` and its count.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("screened_by", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("screening", sa.JSON(), nullable=True))
    op.create_index("ix_messages_disposition_received", "messages",
                    ["disposition", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_disposition_received", table_name="messages")
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("screening")
        batch_op.drop_column("screened_by")
