"""login throttle and token use: progressive login delay per name and address; API token
last use

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:00:00

``login_throttle`` replaces the per-user lock (``users.failed_logins``/``locked_until``, kept:
the first still counts consecutive failures for ``triage user list``). ``api_token_used_at``
lets an operator see a token that is still in use before revoking it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column(
            "api_token_used_at", triage.storage.models.UTCDateTime(timezone=True),
            nullable=True))
    op.create_table(
        "login_throttle",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("not_before", triage.storage.models.UTCDateTime(timezone=True),
                  nullable=False),
        sa.Column("known", sa.Boolean(), nullable=False),
        sa.Column("last_at", triage.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", "address"),
    )
    op.create_index("ix_login_throttle_last_at", "login_throttle", ["last_at"])


def downgrade() -> None:
    op.drop_index("ix_login_throttle_last_at", table_name="login_throttle")
    op.drop_table("login_throttle")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("api_token_used_at")
