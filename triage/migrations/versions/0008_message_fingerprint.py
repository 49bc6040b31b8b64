"""message fingerprint: what makes a message itself, so a reused Message-ID is not a duplicate

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 15:00:00

A SHA-256 over From, To, Cc, Subject, Date, the body and the attachments
(``triage.store.model.fingerprint``). Rows written before it have none; the store works
theirs out from their stored columns when a new message carries their Message-ID.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("fingerprint")
