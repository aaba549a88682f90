"""The transactional enqueue's rows: new outbox rows written on the caller's connection, inside
the caller's transaction, never committed here.

The row and the statement are the drain's (:func:`relay.outbox.store.insert_statement`, one
``INSERT … ON CONFLICT (destination, event_id) DO NOTHING``), so an event written here and the
same event drained from Redis make one row. :func:`insert_in` runs it on a SQLAlchemy
``Connection``; :func:`compiled_insert` hands it as SQL and parameters to a DB-API cursor that
is not SQLAlchemy's (Django's), bound exactly as SQLAlchemy would bind them.

The outbox schema is checked once per engine (or Django alias), on the caller's connection: a
database without the relay's outbox raises :class:`relay.ConfigError` naming ``relay db
upgrade``, before anything is written.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Dialect, Engine
from sqlalchemy.dialects import postgresql, sqlite

from relay.errors import ConfigError
from relay.outbox.migrate import ensure_current
from relay.outbox.store import insert_rows, insert_statement
from relay.queue.wire import NewEvent

NO_OUTBOX_HINT = (
    "the transactional enqueue writes the outbox row into the application's own database, "
    "so that database must be the relay's outbox (RELAY_DATABASE_URL, the workers' too)"
)

_checked: weakref.WeakSet[Engine] = weakref.WeakSet()
_checked_lock = threading.Lock()


def insert_in(connection: Connection, events: Sequence[NewEvent]) -> int:
    """Insert ``events`` on ``connection``, in its transaction (begun if none is); no commit.

    Returns how many rows are new (the rest were in the outbox already). Raises ConfigError
    when the connection's database has no current outbox.
    """
    check_schema(connection)
    statement = insert_statement(connection.dialect.name)
    return len(connection.execute(statement, insert_rows(events)).all())


def check_schema(connection: Connection) -> None:
    """ConfigError unless ``connection``'s database holds a current outbox; once per engine."""
    engine = connection.engine
    if engine in _checked:
        return
    try:
        ensure_current(connection, engine.url.render_as_string(), migrate=False)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; {NO_OUTBOX_HINT}") from None
    with _checked_lock:
        _checked.add(engine)


_DIALECTS: dict[str, Dialect] = {
    # The ``format`` paramstyle (%s) is what Django's cursors take on both databases.
    "postgresql": postgresql.psycopg.dialect(paramstyle="format"),  # type: ignore[no-untyped-call]
    "sqlite": sqlite.pysqlite.dialect(paramstyle="format"),
}


def compiled_insert(vendor: str, event: NewEvent) -> tuple[str, list[Any]]:
    """:func:`insert_statement` of ``event`` for a DB-API cursor of ``vendor`` (``postgresql``
    or ``sqlite``): SQL with ``%s`` placeholders and its parameters, bound as SQLAlchemy binds
    them (JSON text, naive UTC times), so the row is byte for byte the drain's."""
    dialect = _DIALECTS.get(vendor)
    if dialect is None:
        raise ConfigError(
            f"the transactional enqueue writes into PostgreSQL or SQLite, not {vendor}; "
            f"{NO_OUTBOX_HINT}"
        )
    statement = insert_statement(vendor).values(**insert_rows([event])[0])
    compiled = statement.compile(dialect=dialect)
    values = compiled.construct_params()
    params: list[Any] = []
    for name in compiled.positiontup or ():
        process = compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
        value = values[name]
        params.append(process(value) if process is not None else value)
    return compiled.string, params
