"""canned replies, and files on staff replies

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 18:30:00

``canned_replies``: staff-managed reply templates (triage.desk.canned), each tagged with the
request types it is suggested for. ``attachments.outbox_id``: a file sent with a staff
reply belongs to the reply's outbox row, so ``message_pk`` becomes optional (a row has one
or the other).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from triage.storage.models import UTCDateTime

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "canned_replies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("request_types", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("updated_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("outbox_id", sa.Integer(), nullable=True))
        batch_op.alter_column("message_pk", existing_type=sa.Integer(), nullable=True)
        batch_op.create_index("ix_attachments_outbox_id", ["outbox_id"], unique=False)
        batch_op.create_foreign_key("fk_attachments_outbox_id_outbox", "outbox",
                                    ["outbox_id"], ["id"])


def downgrade() -> None:
    # Reply files have no message to keep them by.
    op.execute("DELETE FROM attachments WHERE message_pk IS NULL")
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_constraint("fk_attachments_outbox_id_outbox", type_="foreignkey")
        batch_op.drop_index("ix_attachments_outbox_id")
        batch_op.drop_column("outbox_id")
        batch_op.alter_column("message_pk", existing_type=sa.Integer(), nullable=False)
    op.drop_table("canned_replies")
