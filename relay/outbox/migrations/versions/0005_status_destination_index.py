"""Counts, listings and backlog ages read one index, never the table, at a million rows.

(status, updated_at) served listings by age within one status, but ``relay status`` grouped
the whole table by destination and status: a full scan, 1.1 s at 1.2M rows on SQLite and
0.2-0.4 s on PostgreSQL, growing with the delivered history. (status, destination,
updated_at, enqueued_at) answers the counts by (status, destination) from the index alone, in
its order (no sort), each listing of one (status, destination) by age, and the oldest pending
event's age without reading a pending row. It replaces the old index, so writes pay for no
more indexes than before.

Not CONCURRENTLY, as 0004: ``relay db upgrade`` migrates inside one transaction. Writes to the
outbox wait while it builds: about 2 s per million rows on 2 cores.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_relay_outbox_status_destination",
        "relay_outbox",
        ["status", "destination", "updated_at", "enqueued_at"],
    )
    op.drop_index("ix_relay_outbox_status_updated", table_name="relay_outbox")


def downgrade() -> None:
    op.create_index("ix_relay_outbox_status_updated", "relay_outbox", ["status", "updated_at"])
    op.drop_index("ix_relay_outbox_status_destination", table_name="relay_outbox")
