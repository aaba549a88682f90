"""SQLAlchemy engines for the outbox: PostgreSQL (psycopg) in production, SQLite embedded."""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
"""The relay's own files hold event payloads: readable by their owner only."""


def make_engine(
    url: str,
    *,
    connect_timeout: float | None = None,
    statement_timeout: float | None = None,
    create: bool = True,
) -> Engine:
    """An engine for ``url`` with the settings the outbox relies on.

    SQLite: WAL, a busy timeout (``statement_timeout``, else ``connect_timeout``, else 30 s)
    and ``BEGIN IMMEDIATE`` for every transaction, so that two worker processes queue for the
    write lock instead of failing with "database is locked". A missing database file (and its
    directory) is created private to its owner, unless ``create`` is false: then connecting to
    a missing file fails instead of creating an empty database.
    PostgreSQL: pre-ping, so connections broken by a server restart are replaced;
    ``statement_timeout`` bounds every statement and every lock wait of each transaction.
    Both: errors never carry statement parameters (event payloads) into logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(url, parsed.database, connect_timeout, statement_timeout, create)
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None:
        # libpq counts whole seconds and waits at least 2 s whatever is asked.
        connect_args["connect_timeout"] = max(1, math.ceil(connect_timeout))
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args, hide_parameters=True)
    if statement_timeout is not None:
        _postgres_timeouts(engine, max(1, round(statement_timeout * 1000)))
    return engine


def _postgres_timeouts(engine: Engine, ms: int) -> None:
    # Set per transaction, not per session: behind pgbouncer's transaction pooling a session
    # setting would leak to other clients, and a startup `options` parameter is refused.
    statement = (
        f"SELECT set_config('statement_timeout', '{ms}', true), "
        f"set_config('lock_timeout', '{ms}', true)"
    )

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(statement)


def _sqlite_engine(
    url: str,
    database: str | None,
    connect_timeout: float | None,
    statement_timeout: float | None,
    create: bool,
) -> Engine:
    busy = next((t for t in (statement_timeout, connect_timeout) if t is not None), 30.0)
    kwargs: dict[str, Any] = {"connect_args": {"timeout": busy}, "hide_parameters": True}
    if database and database != ":memory:":
        path = Path(database).absolute()
        if create:
            create_private_file(path)
        else:
            # mode=rw: opening a missing file fails instead of creating an empty database.
            location = f"{path.as_uri()}?mode=rw"
            kwargs["creator"] = lambda: sqlite3.connect(
                location, uri=True, timeout=busy, check_same_thread=False
            )
    engine = create_engine(url, **kwargs)
    _sqlite_transactions(engine, busy_ms=int(busy * 1000))
    return engine


def create_private_file(path: Path) -> None:
    """Create ``path`` (empty) and its directory, readable by the owner only, unless it exists.

    SQLite gives its -wal and -shm files the database file's permissions, so an outbox created
    through here stays private as a whole.
    """
    if not path.parent.exists():
        path.parent.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
    # An existing database keeps the permissions its owner gave it.
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, PRIVATE_FILE))


def _sqlite_transactions(engine: Engine, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see "begin" below).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # busy_timeout first: switching to WAL needs a lock another process may hold right now
        # (two workers starting at once), and without the timeout that fails at once.
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        if cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred transaction that later writes can fail at once with "database is locked"
        # (the busy handler is skipped on lock upgrade); take the write lock up front instead.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
