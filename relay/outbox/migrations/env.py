"""Alembic environment: runs the relay's migrations on the connection ``relay db upgrade`` gives."""

from __future__ import annotations

from alembic import context

from relay.outbox.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
