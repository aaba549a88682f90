"""``enqueue_in_transaction``: the event's outbox row in the current ``atomic()`` block.

    with transaction.atomic():
        order.save()
        enqueue_in_transaction("servoki", purchase, event_id=f"order_{order.pk}")

For a project whose database (``using``) is the relay's outbox database: the row is written
through Django's cursor with the drain's own statement (compiled by
:mod:`relay.outbox.transactional`), so it exists if and only if the block commits, and a
wake-up goes to the workers' queue through ``transaction.on_commit``. Loads SQLAlchemy (to
compile the statement); ``enqueue_on_commit`` is the light, Redis path.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

from relay.contrib.django.apps import relay_app
from relay.errors import ConfigError
from relay.outbox.migrate import head_revision
from relay.outbox.transactional import NO_OUTBOX_HINT, compiled_insert
from relay.queue.wire import NewEvent


def enqueue_in_transaction(
    destination: str,
    payload: Mapping[str, Any],
    *,
    event_id: str | None = None,
    using: str | None = None,
) -> str:
    """Validate the event and write its outbox row in the transaction of database ``using``
    (None: ``default``), which must hold the relay's outbox; never commits it.

    Returns the event id. The row exists if and only if the outermost ``atomic()`` block of
    ``using`` commits (a savepoint rolled back around this call takes it away too); outside a
    transaction it is written at once, as any Django write. A bad payload raises
    :class:`relay.InvalidEvent` naming the field, a database without a current outbox
    :class:`relay.ConfigError` (``relay db upgrade``); nothing is written then.
    """
    enqueuer = relay_app().enqueuer
    event_id, item = enqueuer.encode(destination, payload, event_id)
    enqueuer.write_in(AtomicBlock(using), [item])
    return event_id


class AtomicBlock:
    """The transaction of one Django database alias, as the enqueuer writes into it."""

    def __init__(self, using: str | None) -> None:
        self.using = using or DEFAULT_DB_ALIAS

    def insert(self, events: Sequence[NewEvent]) -> None:
        connection = connections[self.using]
        check_schema(connection)
        with connection.cursor() as cursor:
            for event in events:
                cursor.execute(*compiled_insert(connection.vendor, event))
                cursor.fetchall()  # RETURNING's row: read, so that SQLite finishes the step

    def on_commit(self, callback: Callable[[], object]) -> None:
        transaction.on_commit(callback, using=self.using)


_checked: set[tuple[str, str, str]] = set()
_checked_lock = threading.Lock()


def check_schema(connection: BaseDatabaseWrapper) -> None:
    """ConfigError unless the alias's database holds a current outbox; once per database."""
    settings = connection.settings_dict
    key = (connection.alias, str(settings.get("NAME")), str(settings.get("HOST")))
    if key in _checked:
        return
    with connection.cursor() as cursor:
        current = None
        if "alembic_version" in connection.introspection.table_names(cursor):
            cursor.execute("SELECT version_num FROM alembic_version")
            row = cursor.fetchone()
            current = row[0] if row else None
    if current != head_revision():
        raise ConfigError(
            f"DATABASES[{connection.alias!r}] holds no relay outbox at the current schema: run "
            "`relay db upgrade` with RELAY_DATABASE_URL set to that database; "
            f"{NO_OUTBOX_HINT}"
        )
    with _checked_lock:
        _checked.add(key)
