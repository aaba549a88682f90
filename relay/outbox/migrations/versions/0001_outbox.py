"""Create the outbox table.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# As ``relay.outbox.schema.UTCDateTime`` was at this revision: naive UTC in a plain DateTime
# column (the conversion to aware datetimes happens in Python, not in the DDL). Inlined so that a
# later change to schema.py cannot change what this migration creates.
UTC_DATETIME = sa.DateTime()


def upgrade() -> None:
    op.create_table(
        "relay_outbox",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("destination", sa.String(100), nullable=False),
        sa.Column("event_id", sa.String(200), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", UTC_DATETIME, nullable=False),
        sa.Column("lease_token", sa.String(36), nullable=True),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("enqueued_at", UTC_DATETIME, nullable=False),
        sa.Column("created_at", UTC_DATETIME, nullable=False),
        sa.Column("updated_at", UTC_DATETIME, nullable=False),
        sa.Column("delivered_at", UTC_DATETIME, nullable=True),
        sa.UniqueConstraint("destination", "event_id", name="uq_relay_outbox_destination_event"),
    )
    op.create_index("ix_relay_outbox_due", "relay_outbox", ["status", "next_attempt_at"])
    op.create_index("ix_relay_outbox_status_updated", "relay_outbox", ["status", "updated_at"])


def downgrade() -> None:
    op.drop_table("relay_outbox")
