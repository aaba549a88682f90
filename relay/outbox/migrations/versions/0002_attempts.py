"""Attempt history for operators; the ``discarded`` status needs no schema change.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# As ``relay.outbox.schema.UTCDateTime`` was at this revision: naive UTC in a plain DateTime
# column (the conversion to aware datetimes happens in Python, not in the DDL). Inlined so that a
# later change to schema.py cannot change what this migration creates.
UTC_DATETIME = sa.DateTime()

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "relay_attempts",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("outbox_id", _ID, nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at", UTC_DATETIME, nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
    )
    op.create_index("ix_relay_attempts_outbox", "relay_attempts", ["outbox_id", "id"])


def downgrade() -> None:
    op.drop_table("relay_attempts")
