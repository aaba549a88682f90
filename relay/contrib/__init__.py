"""The relay inside the web frameworks its users live in: Flask, FastAPI/Starlette.

    flask.py     ``Relay(app)`` / ``init_app``: settings from ``app.config``, checked at start
    fastapi.py   ``lifespan`` (opens and closes the Redis pool) and the ``Events`` dependency

Both sit on the web side: they load ``relay.enqueue`` and the settings, never the worker,
Celery, SQLAlchemy or httpx. :func:`settings_overrides` is how each reads its framework's
configuration: the ``RELAY_*`` keys of a mapping, over the environment.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.errors import ConfigError
from relay.settings import Settings

PREFIX = "RELAY_"


def settings_overrides(config: Mapping[str, Any], prefix: str = PREFIX) -> dict[str, Any]:
    """The relay settings named in ``config`` (``RELAY_REDIS_URL`` → ``redis_url``).

    Keys without the prefix are the framework's own and are left alone; a ``RELAY_*`` key the
    relay does not know is a ConfigError naming it (a typo would otherwise be ignored).
    """
    known = set(Settings.model_fields)
    overrides: dict[str, Any] = {}
    for key, value in config.items():
        if not key.startswith(prefix):
            continue
        name = key.removeprefix(prefix).lower()
        if name not in known:
            raise ConfigError(
                f"{key} is not a relay setting; the settings are listed in the README "
                "(Settings): check the spelling"
            )
        overrides[name] = value
    return overrides
