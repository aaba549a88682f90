"""SQLAlchemy engines for the outbox: PostgreSQL (psycopg) in production, SQLite embedded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def make_engine(url: str, *, connect_timeout: float | None = None) -> Engine:
    """An engine for ``url`` with the settings the outbox relies on.

    SQLite: WAL, a long busy timeout and ``BEGIN IMMEDIATE`` for every transaction, so that two
    worker processes queue for the write lock instead of failing with "database is locked".
    PostgreSQL: pre-ping, so connections broken by a server restart are replaced.
    Both: errors never carry statement parameters (event payloads) into logs.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        timeout = connect_timeout if connect_timeout is not None else 30.0
        engine = create_engine(url, connect_args={"timeout": timeout}, hide_parameters=True)
        _sqlite_transactions(engine, busy_ms=int(timeout * 1000))
        return engine
    connect_args: dict[str, Any] = {}
    if connect_timeout is not None:
        connect_args["connect_timeout"] = max(1, round(connect_timeout))
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args, hide_parameters=True)


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


def safe_url(url: str) -> str:
    """``url`` without its password, fit for messages."""
    return make_url(url).render_as_string(hide_password=True)
