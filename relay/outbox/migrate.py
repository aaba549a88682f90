"""``relay db upgrade``: apply the Alembic migrations in ``relay/outbox/migrations`` to the outbox
database, and the one schema check every part runs before it touches the outbox."""

from __future__ import annotations

import functools
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

from relay.errors import ConfigError
from relay.urls import safe_url

MIGRATIONS = Path(__file__).parent / "migrations"


def _config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the outbox schema up to ``revision`` (default: the newest)."""
    config = _config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


@functools.cache
def head_revision() -> str:
    """The newest migration's revision: what ``alembic_version`` holds in a current outbox."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def is_current(bind: Engine | Connection) -> bool:
    """Whether the database is at the newest migration. A ``Connection`` is read as it is, in
    its transaction (the transactional enqueue checks the caller's own connection)."""
    if isinstance(bind, Engine):
        with bind.connect() as connection:
            return is_current(connection)
    return MigrationContext.configure(bind).get_current_revision() == head_revision()


def ensure_current(bind: Engine | Connection, url: str, *, migrate: bool = True) -> None:
    """Raise ConfigError unless the outbox at ``url`` is at the newest schema.

    An embedded (SQLite) outbox is migrated on the spot when ``migrate`` is true, as the worker
    and the operator commands do; a PostgreSQL outbox is left to ``relay db upgrade``. enqueue()'s
    fallback and the transactional enqueue pass ``migrate=False``: an outbox they migrated could
    be one no worker reads. SQLAlchemy errors (the database does not answer) pass through.
    """
    if is_current(bind):
        return
    if migrate and isinstance(bind, Engine) and bind.dialect.name == "sqlite":
        upgrade(bind)
        return
    raise not_current(url)


def not_current(url: str) -> ConfigError:
    """The error of an outbox database (``url``) that is missing or behind the migrations."""
    return ConfigError(
        f"the outbox database at {safe_url(url)} is not at the current schema: run "
        "`relay db upgrade` with the relay's settings"
    )
