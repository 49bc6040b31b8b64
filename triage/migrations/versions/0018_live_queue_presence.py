"""live queue and presence: an index for "what changed since", and who has a work order open

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-04 09:00:00

``ix_work_orders_changed`` (updated_at, number, version) answers the live queue's poll with
one range scan that needs no table rows. ``presence`` holds one row per work order and staff
user with the page open (viewing or replying), refreshed by the page's heartbeat, so daemons
sharing one PostgreSQL see each other's staff (triage.desk.live).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_work_orders_changed", "work_orders", ["updated_at", "number", "version"])
    op.create_table(
        "presence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("work_order_id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("seen_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.ForeignKeyConstraint(["work_order_id"], ["work_orders.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("work_order_id", "user_id", name="uq_presence_work_order_user"),
    )
    op.create_index("ix_presence_seen_at", "presence", ["seen_at"])


def downgrade() -> None:
    op.drop_index("ix_presence_seen_at", table_name="presence")
    op.drop_table("presence")
    op.drop_index("ix_work_orders_changed", table_name="work_orders")
