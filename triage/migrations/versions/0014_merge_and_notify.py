"""merged work orders; notifications to staff through the outbox

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-01 18:20:00

``work_orders.merged_into_id``: a work order merged into another (same client) is closed and
points at the one that carries its thread on; its number still resolves. ``outbox.notify_key``
names one notification to staff (an assignment, a client's reply, a webhook post): UNIQUE, so
the same notification can never be queued twice, whatever path or retry queues it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("merged_into_id", sa.Integer(), nullable=True))
        batch_op.create_index("ix_work_orders_merged_into_id", ["merged_into_id"])
        batch_op.create_foreign_key("fk_work_orders_merged_into_id", "work_orders",
                                    ["merged_into_id"], ["id"])
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("notify_key", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint("uq_outbox_notify_key", ["notify_key"])


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_constraint("uq_outbox_notify_key", type_="unique")
        batch_op.drop_column("notify_key")
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_constraint("fk_work_orders_merged_into_id", type_="foreignkey")
        batch_op.drop_index("ix_work_orders_merged_into_id")
        batch_op.drop_column("merged_into_id")
