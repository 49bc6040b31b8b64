"""drop the per-user lock's columns: ``users.locked_until`` and ``users.failed_logins``

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-03 11:00:00

``login_throttle`` (0010) replaced the lock: nothing reads ``locked_until``, and the failures
``failed_logins`` counted are in ``login_throttle`` too (``triage user list`` reads them
there), so a wrong password no longer costs a second write transaction.

SQLite drops the columns with its own ``ALTER TABLE … DROP COLUMN`` (3.35+), not a batch
copy of the table: with foreign keys on, dropping the old ``users`` table would fail while
``web_sessions`` rows point at it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import triage.storage.models

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("users", "locked_until")
    op.drop_column("users", "failed_logins")


def downgrade() -> None:
    op.add_column("users", sa.Column("failed_logins", sa.Integer(), nullable=False,
                                     server_default="0"))
    op.add_column("users", sa.Column(
        "locked_until", triage.storage.models.UTCDateTime(timezone=True), nullable=True))
