"""``relay db upgrade``: apply the Alembic migrations in ``relay/outbox/migrations`` to the outbox
database, and the one schema check every part runs before it touches the outbox."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

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


def is_current(engine: Engine) -> bool:
    """Whether the database is at the newest migration."""
    head = ScriptDirectory.from_config(_config(engine)).get_current_head()
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision() == head


def ensure_current(engine: Engine, url: str, *, migrate: bool = True) -> None:
    """Raise ConfigError unless the outbox at ``url`` is at the newest schema.

    An embedded (SQLite) outbox is migrated on the spot when ``migrate`` is true, as the worker
    and the operator commands do; a PostgreSQL outbox is left to ``relay db upgrade``. enqueue()'s
    fallback passes ``migrate=False``: an outbox it migrated could be one no worker reads.
    SQLAlchemy errors (the database does not answer) pass through.
    """
    if is_current(engine):
        return
    if migrate and engine.dialect.name == "sqlite":
        upgrade(engine)
        return
    raise ConfigError(
        f"the outbox database at {safe_url(url)} is not at the current schema: run "
        "`relay db upgrade` with the relay's settings"
    )
