"""When an operator last sent a dead row again: its age limit counts from then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from relay.outbox.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, on PostgreSQL or SQLite.
    op.add_column("relay_outbox", sa.Column("retried_at", UTCDateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("relay_outbox") as batch:
        batch.drop_column("retried_at")
