"""enqueue()'s fallback when Redis is unreachable: write the events straight into the outbox.

Loaded only when Redis fails, so the normal enqueue path never imports SQLAlchemy. The worker
delivers these rows like any other; they carry the same event ids, so a later Redis copy of the
same event is deduplicated by the outbox's unique key.

It writes only where a relay reads: into an outbox that exists and is at the current schema.
It never creates a database file or runs a migration (an outbox made here would be one that no
worker reads), and it keeps within the enqueue budget: the schema is checked once per engine,
then each call is one short transaction under ``RELAY_ENQUEUE_TIMEOUT``-sized timeouts.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from relay.errors import ConfigError, RelayUnavailable
from relay.outbox.engine import make_engine
from relay.outbox.migrate import ensure_current
from relay.outbox.store import Outbox
from relay.queue.wire import parse_items
from relay.settings import Settings
from relay.urls import describe_error, safe_url

log = logging.getLogger("relay.enqueue")

NOTHING_WRITTEN = "nothing was written"

LOG_EVERY = 10.0
"""Seconds between the fallback's warnings while Redis stays unavailable."""


class OutboxWriter:
    """Writes queue items into an existing, current outbox; one per Enqueuer."""

    def __init__(self, settings: Settings, destinations: frozenset[str]) -> None:
        self.url = settings.resolved_database_url
        self.where = f"the outbox database at {safe_url(self.url)}"
        self.timeout = settings.enqueue_timeout
        self.destinations = destinations
        self.max_bytes = settings.max_event_bytes
        self._settings = settings
        parsed = make_url(self.url)
        self._sqlite_file = (
            Path(parsed.database).resolve()
            if parsed.get_backend_name() == "sqlite" and parsed.database
            else None
        )
        self._file_id: tuple[int, int] | None = None
        self._engine: Engine | None = None
        self._schema_ok = False
        self._lock = threading.Lock()
        self._unreported = 0
        self._reported_at = -LOG_EVERY

    def write(self, items: list[bytes]) -> None:
        """Insert ``items`` in one transaction; RelayUnavailable (nothing written) otherwise."""
        events = parse_items(items, self.destinations, self.max_bytes).events
        if self._sqlite_file_replaced():
            self.close()
        engine = self._engine or self._open()
        try:
            if not self._schema_ok:
                self._check_schema(engine)
            Outbox(engine).insert(events)
        except SQLAlchemyError as exc:
            # The next call checks the schema again; a missing table (the database was reset)
            # is checked now, so that the message says what to do.
            self._schema_ok = False
            if _missing_table(exc):
                self._check_schema(engine, after=exc)
            raise RelayUnavailable(
                f"{self.where} failed too ({describe_error(exc, self.url)}); {NOTHING_WRITTEN}"
            ) from exc
        self._report(len(events))

    def _report(self, written: int) -> None:
        """One warning per ``LOG_EVERY`` seconds, not one per web request of an outage."""
        now = time.monotonic()
        with self._lock:
            self._unreported += written
            if now - self._reported_at < LOG_EVERY:
                return
            written, self._unreported, self._reported_at = self._unreported, 0, now
        log.warning(
            "Redis unavailable: wrote %d event(s) straight into %s (logged at most every %.0fs)",
            written,
            self.where,
            LOG_EVERY,
        )

    def close(self) -> None:
        """Close the pooled connections (on Enqueuer.close)."""
        with self._lock:
            if self._engine is not None:
                self._engine.dispose()
                self._engine = None
                self._schema_ok = False

    def _open(self) -> Engine:
        with self._lock:
            if self._engine is None:
                if self._sqlite_file is not None:
                    self._file_id = _file_id(self._sqlite_file)
                    if self._file_id is None:
                        raise RelayUnavailable(self._no_sqlite_file(self._sqlite_file))
                self._engine = make_engine(
                    self.url,
                    connect_timeout=self.timeout,
                    statement_timeout=self.timeout,
                    create=False,
                )
            return self._engine

    def _check_schema(self, engine: Engine, after: SQLAlchemyError | None = None) -> None:
        try:
            ensure_current(engine, self.url, migrate=False)
        except SQLAlchemyError as exc:
            if after is not None:
                return  # the database itself fails: the caller reports the first error
            raise RelayUnavailable(
                f"{self.where} failed too ({describe_error(exc, self.url)}); {NOTHING_WRITTEN}"
            ) from exc
        except ConfigError as exc:
            raise RelayUnavailable(f"{exc}; {NOTHING_WRITTEN}") from after
        self._schema_ok = True

    def _sqlite_file_replaced(self) -> bool:
        # A SQLite file deleted or replaced since it was opened (a reset relay): pooled
        # connections would still write into the old one, which no worker reads.
        if self._engine is None or self._sqlite_file is None:
            return False
        return _file_id(self._sqlite_file) != self._file_id

    def _no_sqlite_file(self, path: Path) -> str:
        if self._settings.database_url:
            return (
                f"there is no outbox at {path} (RELAY_DATABASE_URL), so {NOTHING_WRITTEN}: "
                "point RELAY_DATABASE_URL at the relay's outbox, or create it with "
                "`relay db upgrade`"
            )
        return no_relay_at_home(self._settings, path)


def _file_id(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_dev, stat.st_ino


def _missing_table(exc: SQLAlchemyError) -> bool:
    cause = getattr(exc, "orig", None)
    # PostgreSQL: undefined_table; SQLite has no error code for it, only the message.
    return getattr(cause, "sqlstate", None) == "42P01" or "no such table" in str(cause)


def no_relay_at_home(settings: Settings, outbox: Path) -> str:
    """Why enqueue() found no relay under RELAY_HOME, and how to point it at one."""
    home = settings.home.resolve()
    if "home" not in settings.model_fields_set:
        named = f"RELAY_HOME is unset: the relay's home is {home}, relative to the working "
    elif not settings.home.is_absolute():
        named = f"RELAY_HOME is {str(settings.home)!r}: the relay's home is {home}, relative to "
        named += "the working "
    else:
        named = ""
    if named:
        named += f"directory {os.getcwd()} of this process. "
    return (
        f"there is no outbox at {outbox} either, so no relay runs at that home and "
        f"{NOTHING_WRITTEN}. {named}Start the relay there (its worker creates the outbox), "
        "or point enqueue() at the relay you run: set RELAY_HOME to the "
        "relay's home as an absolute path (the worker's RELAY_HOME; by default .relay in the "
        "directory the worker was started from), or set RELAY_REDIS_URL and RELAY_DATABASE_URL "
        "to the relay's Redis and outbox database"
    )
