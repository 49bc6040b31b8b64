"""oauth tokens: delegated OAuth2 logins' refresh tokens, encrypted

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00:00

A mailbox that logs in as a user (Microsoft's device-code flow, Google's installed-app
authorisation) holds a refresh token that the IdP may replace on every use. It lives in the
database, not a file, so that every ``triage run`` on the same database sees a rotation at
once; both tokens are Fernet-encrypted with TRIAGE_OAUTH_TOKEN_KEY (triage.oauth_store).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from triage.storage.models import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "oauth_tokens",
        sa.Column("key", sa.String(length=512), primary_key=True),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("refresh_token", sa.Text(), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=True),
        sa.Column("access_expires_at", UTCDateTime(), nullable=True),
        sa.Column("issued_at", UTCDateTime(), nullable=False),
        sa.Column("authorised_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("oauth_tokens")
