"""queue indexes: partial indexes over the active work orders for the staff queue

At 100,000 work orders (70 % resolved) the queue's count, its counts per type and its
nearest-due-first page each scanned the whole table. Both indexes hold only the rows the
queue shows by default (not resolved), so they stay a third of the table's size:
- ``ix_work_orders_active_due`` (next_due, id): the page read in order, without a sort, and
  the totals of the SLA filters;
- ``ix_work_orders_active_counts``: the counts per type and the totals of the type and
  review filters, from the index alone.
Both carry ``number``, which the queue's totals test, so those need no table row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

ACTIVE = "status <> 'resolved'"  # the queue's literal: triage.desk.queue._RESOLVED


def upgrade() -> None:
    op.create_index(
        "ix_work_orders_active_due", "work_orders", ["next_due", "id", "number"], unique=False,
        sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE),
    )
    op.create_index(
        "ix_work_orders_active_counts", "work_orders",
        ["request_type", "needs_review", "next_due", "at_risk_at", "number"], unique=False,
        sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_work_orders_active_counts", table_name="work_orders")
    op.drop_index("ix_work_orders_active_due", table_name="work_orders")
