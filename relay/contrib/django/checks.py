"""``manage.py check``: the relay's settings, and whether the admin reads the relay's outbox.

relay.E001  a relay setting is invalid (the ConfigError's message names it)
relay.E002  RELAY["DATABASE_ALIAS"] names no DATABASES entry (checked with the admin)
relay.W001  that entry is not the database of RELAY_DATABASE_URL: the admin would list one
            outbox and its actions change another
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from relay.contrib.django.conf import DjangoRelay, same_database
from relay.errors import ConfigError
from relay.urls import safe_url

KEYS_HINT = (
    "fix it in settings.RELAY or the RELAY_* variable; settings.RELAY's keys are the variable "
    'names without "RELAY_" (e.g. "REDIS_URL"), listed in the README (Settings)'
)


def settings_messages(
    relay: DjangoRelay | None,
    error: ConfigError | None,
    databases: Mapping[str, Any],
    *,
    admin: bool,
) -> list[CheckMessage]:
    """What the check reports for settings read into ``relay`` (or failing with ``error``);
    the database alias is checked when the Django ``admin`` is installed (it reads there)."""
    if error is not None or relay is None:
        return [Error(str(error), hint=KEYS_HINT, id="relay.E001")]
    alias = relay.database_alias
    if not admin:
        return []
    if alias not in databases:
        return [
            Error(
                f'settings.RELAY["DATABASE_ALIAS"] is {alias!r}, which is not in DATABASES '
                f"({', '.join(databases) or 'none'})",
                hint="name the DATABASES entry that holds the relay's outbox (default: 'default')",
                id="relay.E002",
            )
        ]
    url = relay.settings.resolved_database_url
    if same_database(databases[alias], url) is False:
        return [
            Warning(
                f"DATABASES[{alias!r}] is not the relay's outbox database "
                f"({safe_url(url)}): the admin would list one outbox and retry in another",
                hint="point RELAY_DATABASE_URL (the workers read it too) at that database, or "
                'set RELAY["DATABASE_ALIAS"] to the DATABASES entry of the outbox',
                id="relay.W001",
            )
        ]
    return []
