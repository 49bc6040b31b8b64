"""staff web app: users, sessions, corrections, work-order assignment and SLA marks

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 06:07:50.818519
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=255), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("failed_logins", sa.Integer(), nullable=False),
        sa.Column("locked_until", triage.storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("api_token_hash", sa.String(length=64), nullable=True),
        sa.Column("last_login_at", triage.storage.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("api_token_hash"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_user_id"), ["user_id"], unique=False)

    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("work_order_id", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("old_type", sa.String(length=64), nullable=False),
        sa.Column("new_type", sa.String(length=64), nullable=False),
        sa.Column("old_priority", sa.String(length=16), nullable=False),
        sa.Column("new_priority", sa.String(length=16), nullable=False),
        sa.Column("at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["work_order_id"],
            ["work_orders.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_corrections_work_order_id"), ["work_order_id"], unique=False
        )

    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("assignee_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column(
                "promised_at", triage.storage.models.UTCDateTime(timezone=True), nullable=True
            )
        )
        batch_op.add_column(
            sa.Column("pauses", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(
            sa.Column("next_due", triage.storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("at_risk_at", triage.storage.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_work_orders_assignee_id"), ["assignee_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_work_orders_next_due"), ["next_due"], unique=False)
        batch_op.create_foreign_key(
            "fk_work_orders_assignee_id_users", "users", ["assignee_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_constraint("fk_work_orders_assignee_id_users", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_work_orders_next_due"))
        batch_op.drop_index(batch_op.f("ix_work_orders_assignee_id"))
        batch_op.drop_column("at_risk_at")
        batch_op.drop_column("next_due")
        batch_op.drop_column("pauses")
        batch_op.drop_column("promised_at")
        batch_op.drop_column("assignee_id")

    with op.batch_alter_table("corrections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_corrections_work_order_id"))

    op.drop_table("corrections")
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_id"))

    op.drop_table("web_sessions")
    op.drop_table("users")
