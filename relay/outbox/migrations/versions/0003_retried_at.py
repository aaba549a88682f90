"""When an operator last sent a dead row again: its age limit counts from then.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# As ``relay.outbox.schema.UTCDateTime`` was at this revision: naive UTC in a plain DateTime
# column (the conversion to aware datetimes happens in Python, not in the DDL). Inlined so that a
# later change to schema.py cannot change what this migration creates.
UTC_DATETIME = sa.DateTime()


def upgrade() -> None:
    # Nullable, no default: adding it rewrites nothing, on PostgreSQL or SQLite.
    op.add_column("relay_outbox", sa.Column("retried_at", UTC_DATETIME, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("relay_outbox") as batch:
        batch.drop_column("retried_at")
