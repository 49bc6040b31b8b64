"""sla watch: one row per SLA notice sent, unique per (work order, target, state)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 05:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sla_alerts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("work_order_id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("created_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"]),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("work_order_id", "target", "state", name="uq_sla_alerts_once"),
    )


def downgrade() -> None:
    op.drop_table("sla_alerts")
