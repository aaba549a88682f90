"""``settings.RELAY``: the relay's settings in a Django project, over ``RELAY_*`` variables.

    RELAY = {
        "DATABASE_ALIAS": "default",   # the DATABASES entry of RELAY_DATABASE_URL, for the admin
        "ENQUEUE_TIMEOUT": 0.05,
    }

Keys are the ``RELAY_*`` variable names without ``RELAY_`` (``REDIS_URL`` for
``RELAY_REDIS_URL``), in capitals as Django's own settings are (lower case is read too). They
override the environment, ``.env`` and ``RELAY_CONFIG``, which still supply the rest.
``DATABASE_ALIAS`` is Django's alone: the ``DATABASES`` entry the admin reads the outbox
through (default ``"default"``).

Only the web processes read ``settings.RELAY``: the Celery workers and the ``relay`` command
read the variables and ``RELAY_CONFIG``. What both sides must agree on (Redis, the outbox
database, the namespace, the keys) belongs there; ``settings.RELAY`` is for what the web side
alone uses (``ENQUEUE_TIMEOUT``, ``DATABASE_ALIAS``) and for tests' ``override_settings``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from relay.contrib import PREFIX, settings_overrides
from relay.errors import ConfigError
from relay.settings import Settings, load_settings

DATABASE_ALIAS = "DATABASE_ALIAS"
DEFAULT_ALIAS = "default"


@dataclass(frozen=True)
class DjangoRelay:
    """The relay's settings and the Django database alias that holds its outbox."""

    settings: Settings
    database_alias: str


def read_settings(config: object) -> DjangoRelay:
    """Read ``settings.RELAY`` (``config``; None when unset) over the environment; check it.

    A key the relay does not know is a ConfigError naming it (a typo would otherwise be
    ignored); so is every invalid value, with the message :func:`relay.settings.load_settings`
    gives.
    """
    if config is None:
        config = {}
    if not isinstance(config, Mapping) or not all(isinstance(k, str) for k in config):
        raise ConfigError(
            f"settings.RELAY must be a dict of relay settings such as "
            f'{{"REDIS_URL": "redis://…"}}, got {type(config).__name__}'
        )
    values: dict[str, Any] = {}
    alias = DEFAULT_ALIAS
    for key, value in config.items():
        if key.upper() == DATABASE_ALIAS:
            if not isinstance(value, str) or not value:
                raise ConfigError(f"settings.RELAY[{key!r}] must name a DATABASES entry")
            alias = value
        else:
            values[PREFIX + key.upper()] = value
    return DjangoRelay(load_settings(**settings_overrides(values)), alias)


def same_database(django_db: Mapping[str, Any], url: str) -> bool | None:
    """Whether a ``DATABASES`` entry and the relay's database URL name one database.

    None when it cannot tell (an engine the outbox does not run on). Compared: the engine
    family, and the file (SQLite) or host, port and name (PostgreSQL).
    """
    engine = str(django_db.get("ENGINE", ""))
    name = str(django_db.get("NAME") or "")
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if engine.endswith("sqlite3"):
        if scheme != "sqlite":
            return False
        path = unquote(parts.path).removeprefix("/")
        return bool(path) and Path(path).resolve() == Path(name).resolve()
    if engine.endswith("postgresql"):
        if scheme not in ("postgresql", "postgres"):
            return False
        host = str(django_db.get("HOST") or "")
        port = str(django_db.get("PORT") or "")
        same_host = not host or not parts.hostname or host == parts.hostname
        same_port = not port or not parts.port or port == str(parts.port)
        return unquote(parts.path).removeprefix("/") == name and same_host and same_port
    return None
