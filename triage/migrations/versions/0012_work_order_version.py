"""work order version: optimistic concurrency for the staff pages (the collision guard)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-03 09:00:00

``work_orders.version`` counts the changes staff or a client made to a work order; a page
carries the version it showed, and an action sent from an older page is refused.
``events.wo_version`` is the version an event produced, so the refusal can list exactly the
events since the page's version. Events from before this (and system events that change
nothing a technician acts on, such as ``ack_sent``) keep NULL.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("version", sa.Integer(), nullable=False,
                                      server_default=sa.text("1")))
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("wo_version", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("events", schema=None) as batch_op:
        batch_op.drop_column("wo_version")
    with op.batch_alter_table("work_orders", schema=None) as batch_op:
        batch_op.drop_column("version")
