"""Indexes that keep claims fast behind another destination's backlog.

(status, next_attempt_at) made every claim for one destination walk the pending rows of all
the others: 37 ms per claim behind 300k rows of a paused destination, growing with them. The
partial index holds only pending rows, by destination, so a claim reads the rows it takes.

Not CONCURRENTLY: ``relay db upgrade`` runs the migrations inside one transaction, where
PostgreSQL refuses it. Writes to the outbox wait while the indexes build: 0.9 s at 1.3M rows
on 2 cores (events wait in Redis meanwhile).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")


def upgrade() -> None:
    # Claims and next-due reads: one destination's pending rows, earliest due first.
    op.create_index(
        "ix_relay_outbox_pending_due",
        "relay_outbox",
        ["destination", "next_attempt_at"],
        postgresql_where=_PENDING,
        sqlite_where=_PENDING,
    )
    # `relay outbox show/retry EVENT_ID` without --destination: the unique constraint leads
    # with destination and cannot serve event_id alone.
    op.create_index("ix_relay_outbox_event_id", "relay_outbox", ["event_id"])
    # No query needs it any more, and every index costs every insert and every update.
    op.drop_index("ix_relay_outbox_due", table_name="relay_outbox")


def downgrade() -> None:
    op.create_index("ix_relay_outbox_due", "relay_outbox", ["status", "next_attempt_at"])
    op.drop_index("ix_relay_outbox_event_id", table_name="relay_outbox")
    op.drop_index("ix_relay_outbox_pending_due", table_name="relay_outbox")
