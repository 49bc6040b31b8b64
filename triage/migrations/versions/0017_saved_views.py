"""saved views: a technician's named queue filters, and an index for the views' counts

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01 18:30:00

``saved_views`` holds each user's views (a queue filter as its query arguments, under a name
unique per user). The navigation counts every view of the signed-in user on every page, one
count each; the defaults every user has ("Mine", "Unassigned urgent") filter on the assignee,
which no index over the active work orders led with. ``ix_work_orders_active_assignee``
(partial, like migration 0004's) leads with ``assignee_id`` and carries every other column
the queue's filters test, so a view's count over the active work orders reads a range of the
index and no table row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

ACTIVE = "status <> 'resolved'"  # the queue's literal: triage.desk.queue._RESOLVED


def upgrade() -> None:
    op.create_table(
        "saved_views",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("filters", sa.JSON(), nullable=False),
        sa.Column("created_at", triage.storage.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.Column("updated_at", triage.storage.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("user_id", "name", name="uq_saved_views_user_name"),
    )
    op.create_index(
        "ix_work_orders_active_assignee", "work_orders",
        ["assignee_id", "priority", "status", "request_type", "needs_review", "next_due",
         "at_risk_at", "number"], unique=False,
        sqlite_where=sa.text(ACTIVE), postgresql_where=sa.text(ACTIVE),
    )


def downgrade() -> None:
    op.drop_index("ix_work_orders_active_assignee", table_name="work_orders")
    op.drop_table("saved_views")
