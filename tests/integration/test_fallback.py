"""enqueue()'s outbox fallback: it writes only where a relay reads, and keeps its budget.

Redis is made unreachable (a refused port, or no embedded Redis at the home), so every enqueue
here goes down the fallback path against a real SQLite file or a real PostgreSQL. Where
there is no outbox to write to (nothing is created): tests/unit/test_fallback_guard.py.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, func, select, text

import relay
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.migrate import is_current, upgrade
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.fallback import NO_REDIS, unavailable


def rows(url: str) -> list[str]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(select(outbox.c.event_id).order_by(outbox.c.id)).scalars())
    finally:
        engine.dispose()


# -- embedded defaults: no relay, no write -------------------------------------------------


def test_the_home_outbox_takes_events_while_its_redis_is_down(
    clean_env: None, configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    """A relay has run at the home (its outbox is migrated); its Redis is stopped."""
    home = tmp_path / "home"
    url = Settings(home=home).resolved_database_url
    engine = make_engine(url)  # what `relay db upgrade` and the worker do
    upgrade(engine)
    engine.dispose()
    configured(home=home)
    assert relay.enqueue("servoki", {"event_type": "purchase"}, event_id="e-1") == "e-1"
    assert rows(url) == ["e-1"]
    assert not (home / "redis.sock").exists()  # enqueue() never starts Redis

    # The relay is reset (its home removed): the pooled connection must not write into the
    # deleted file, where no worker would ever read the event.
    for path in home.iterdir():
        path.unlink()
    message = unavailable(event_id="e-2")
    assert f"there is no outbox at {home}/outbox.db" in message
    assert list(home.iterdir()) == []


def test_an_outage_logs_one_warning_not_one_per_request(
    clean_env: None,
    configured: Callable[..., Enqueuer],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    configured(redis_url=NO_REDIS, database_url=url)
    with caplog.at_level("WARNING", logger="relay.enqueue"):
        for n in range(5):
            relay.enqueue("servoki", {"event_type": "purchase"}, event_id=f"e-{n}")
    assert len(rows(url)) == 5
    warnings = [r.getMessage() for r in caplog.records if "straight into" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("Redis unavailable: wrote 1 event(s)")


# -- the outbox must be at the current schema; enqueue() never migrates ---------------------


def migrate_to(url: str, revision: str) -> None:
    from alembic import command

    from relay.outbox.migrate import _config

    engine = make_engine(url)
    config = _config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)
    engine.dispose()


def test_an_outbox_behind_the_schema_is_not_written_nor_migrated(
    db_url: str, configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    migrate_to(db_url, "0002")
    configured(home=tmp_path, redis_url=NO_REDIS, database_url=db_url)
    message = unavailable()
    assert "is not at the current schema" in message and "run `relay db upgrade`" in message
    assert "nothing was written" in message
    engine = make_engine(db_url)
    assert not is_current(engine)  # enqueue() did not migrate it
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar() == 0
    engine.dispose()


# -- the budget: one short transaction after the first call ------------------------------


@pytest.fixture
def statements() -> Iterator[list[str]]:
    """Every SQL statement any engine sends while the fixture is active."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(Engine, "before_cursor_execute", record)
    yield seen
    event.remove(Engine, "before_cursor_execute", record)


def test_the_schema_is_checked_once_per_engine(
    db_url: str,
    configured: Callable[..., Enqueuer],
    statements: list[str],
    tmp_path: Path,
) -> None:
    configured(home=tmp_path, redis_url=NO_REDIS, database_url=db_url)
    relay.enqueue("servoki", {"event_type": "purchase"}, event_id="first")
    assert any("alembic_version" in s for s in statements)  # the first call checks
    statements.clear()
    relay.enqueue("servoki", {"event_type": "purchase"}, event_id="second")
    assert not any("alembic_version" in s for s in statements), statements
    assert sum("INSERT" in s for s in statements) == 1
    assert len(statements) <= 2, statements  # SQLite: BEGIN IMMEDIATE, then the INSERT

    # The table goes away (the database was reset): the failed insert re-checks the schema.
    engine = make_engine(db_url)
    with engine.begin() as conn:
        for table in ("relay_attempts", "relay_outbox", "alembic_version"):
            conn.execute(text(f"DROP TABLE {table}"))
    message = unavailable(event_id="third")
    assert "is not at the current schema" in message and "run `relay db upgrade`" in message
    upgrade(engine)
    engine.dispose()
    relay.enqueue("servoki", {"event_type": "purchase"}, event_id="fourth")
    assert rows(db_url) == ["fourth"]


class WriteLock:
    """Another connection holds the outbox's write lock (PostgreSQL: an ACCESS EXCLUSIVE table
    lock; SQLite: the database write lock), released by ``release`` or after ``limit`` s."""

    def __init__(self, url: str, limit: float = 10.0) -> None:
        self.engine = make_engine(url)
        self.released = threading.Event()
        self.held = threading.Event()
        self.limit = limit
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        with self.engine.connect() as conn:
            if self.engine.dialect.name == "postgresql":
                conn.execute(text("LOCK TABLE relay_outbox IN ACCESS EXCLUSIVE MODE"))
            else:
                # make_engine's SQLite transactions begin IMMEDIATE: the write lock is taken.
                conn.execute(text("SELECT 1"))
            self.held.set()
            self.released.wait(self.limit)
            conn.rollback()

    def __enter__(self) -> WriteLock:
        self.thread.start()
        assert self.held.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.thread.join()
        self.engine.dispose()


def test_a_locked_outbox_gives_up_within_the_budget(
    db_url: str, configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    timeout = 0.2
    configured(home=tmp_path, redis_url=NO_REDIS, database_url=db_url, enqueue_timeout=timeout)
    relay.enqueue("servoki", {"event_type": "purchase"}, event_id="warm")
    with WriteLock(db_url):
        started = time.monotonic()
        message = unavailable(event_id="blocked")
        elapsed = time.monotonic() - started
    assert "the outbox database at" in message and "failed too" in message
    assert elapsed < 5 * timeout, f"gave up after {elapsed:.2f}s"
    relay.enqueue("servoki", {"event_type": "purchase"}, event_id="after")
    assert rows(db_url) == ["warm", "after"]


def test_sqlite_busy_timeout_is_the_enqueue_timeout(
    configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    """A cold fallback (first call) against a SQLite file another process holds locked."""
    url = f"sqlite:///{tmp_path / 'outbox.db'}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    holder = sqlite3.connect(tmp_path / "outbox.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        configured(home=tmp_path, redis_url=NO_REDIS, database_url=url, enqueue_timeout=0.1)
        started = time.monotonic()
        unavailable()
        elapsed = time.monotonic() - started
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert elapsed < 0.6, f"gave up after {elapsed:.2f}s"
