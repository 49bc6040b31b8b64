"""outbox claim index: due rows found in id order, not all of them sorted per claim

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 07:30:00

The claim takes the oldest due rows, 50 at a time. Through ix_outbox_due (status,
next_attempt_at) it read every pending row and sorted them by id for each claim: 17 ms a
claim with 8,000 acknowledgments waiting, growing with the outbox. With (status, id) in its
place it walks pending rows in id order and stops at the 50th (bench/results.md); counting
rows by status uses it as well as the old one.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_outbox_status_id", "outbox", ["status", "id"])
    op.drop_index("ix_outbox_due", table_name="outbox")


def downgrade() -> None:
    op.create_index("ix_outbox_due", "outbox", ["status", "next_attempt_at"])
    op.drop_index("ix_outbox_status_id", table_name="outbox")
