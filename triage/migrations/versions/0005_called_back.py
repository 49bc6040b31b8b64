"""called back: when staff logged the call-back a request type promises (stops that clock)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 06:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "called_back_at", triage.storage.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_column("called_back_at")
