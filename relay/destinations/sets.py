"""Many destinations of one kind from one table: a ``[destination_sets.NAME]`` of tenants.

An agency or a multi-tenant app has one DataLook key per customer account, each its own
destination with its own rate limit. One table declares them all::

    [destination_sets.customers]
    kind = "datalook"
    url = "https://eu.datalook.example"        # shared by every tenant (a tenant may override)
    rate_limit = "500/10s"                     # per tenant: each key has its own window
    keys_file = "/run/secrets/customers.toml"  # acme = "dl_live_…" (mode 600); one tenant each
    prefix = "dl-"                             # optional: destination names dl-acme, dl-globex

    [destination_sets.customers.tenants.globex]   # optional: a tenant's own settings
    url = "https://us.datalook.example"
    api_key_env = "GLOBEX_DATALOOK_KEY"           # or api_key_file = "/run/secrets/globex"

Every tenant becomes the destination ``prefix + tenant``: ``enqueue("dl-acme", …)``, one line
in ``relay status``, its own outbox rows and ``[retry.NAME]`` table. The tenants are the names in
``keys_file`` and in ``tenants`` (a table of tables, or a list of names). A tenant's key comes
from its own ``api_key_env`` / ``api_key_file``, else the set's ``keys_file``, else the set's
``api_key_env`` template (``"DATALOOK_KEY_{NAME}"``: the tenant's name in upper case, ``-`` and
``.`` as ``_``). Keys never sit in the config file itself; a keys file others may read is
refused.

This module reads the table and the key sources; the settings check each tenant as they check
a ``[destinations.NAME]`` table (URL, key shape, limit, the kind's own options).
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from relay.errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A tenant's name (and prefix): it becomes a destination name, shown and typed by operators."""
NAME_LIMIT = 100
"""The longest destination name the outbox stores (its ``destination`` column)."""


class DestinationSet(BaseModel):
    """One ``[destination_sets.NAME]`` table. Besides these keys it may hold the kind's own
    settings (Servoki's ``site``), shared by its tenants."""

    model_config = ConfigDict(extra="allow")

    kind: str
    url: str | None = None
    rate_limit: str | None = None
    prefix: str = ""
    keys_file: Path | None = None
    api_key_env: str | None = None
    """A template with ``{NAME}``: each tenant's variable."""
    tenants: dict[str, dict[str, Any]] | list[str] = {}


@dataclass(frozen=True)
class Tenant:
    """One destination of a set, its key read, ready for the settings' checks."""

    name: str
    """The destination name: the set's prefix and the tenant's name."""
    where: str
    """Where an operator fixes it: ``tenant acme of [destination_sets.customers]``."""
    table: dict[str, Any]
    """Its ``[destinations.NAME]``-style table: the set's shared settings, its own over them."""
    key: str
    key_origin: str
    """Where the key came from, for messages (never the key)."""


def expand(set_name: str, entry: DestinationSet) -> list[Tenant]:
    """The tenants of ``[destination_sets.<set_name>]``, each with its key; ConfigError naming
    the table and the tenant for every mistake."""
    where = f"[destination_sets.{set_name}] in RELAY_CONFIG"
    if entry.prefix and not NAME.fullmatch(entry.prefix):
        raise ConfigError(
            f"{where}: prefix must be letters, digits, '.', '-' or '_', got {entry.prefix!r}"
        )
    template = entry.api_key_env
    if template is not None and "{NAME}" not in template:
        raise ConfigError(
            f'{where}: api_key_env is a template such as "DATALOOK_KEY_{{NAME}}" (each tenant '
            f"reads its own variable), got {template!r}; a key every tenant shares is no tenant "
            "key"
        )
    keys = read_keys_file(entry.keys_file, where) if entry.keys_file else {}
    own = _own_tables(entry.tenants, where)
    names = list(dict.fromkeys([*keys, *own]))
    if not names:
        raise ConfigError(f"{where} has no tenants: list them in keys_file or in a tenants table")
    shared = entry.model_dump(exclude={"prefix", "keys_file", "api_key_env", "tenants"})
    shared = {key: value for key, value in shared.items() if value is not None}
    shared.update(entry.model_extra or {})
    tenants: list[Tenant] = []
    seen_keys: dict[str, str] = {}
    for tenant in names:
        _check_name(tenant, entry.prefix, where)
        at = f"tenant {tenant} of {where}"
        if "kind" in own.get(tenant, {}):
            raise ConfigError(
                f"{at}: kind is the set's, not a tenant's; declare a tenant of another kind in a "
                "set (or a [destinations.NAME] table) of its own"
            )
        table = {**shared, **own.get(tenant, {})}
        key, origin = _tenant_key(tenant, table, keys, entry, at)
        other = seen_keys.get(key)
        if other is not None:
            raise ConfigError(
                f"tenants {other} and {tenant} of {where} have the same key: each tenant is one "
                "account with a key of its own; copy the right key for one of them"
            )
        seen_keys[key] = tenant
        table.pop("api_key_env", None)
        table.pop("api_key_file", None)
        tenants.append(Tenant(entry.prefix + tenant, at, table, key, origin))
    return tenants


def read_key(where: str, api_key_env: str | None, api_key_file: Path | None) -> str:
    """A key from ``$api_key_env`` or ``api_key_file`` (stripped); ConfigError if neither gives
    one."""
    if api_key_env:
        raw = os.environ.get(api_key_env)
        if not raw:
            raise ConfigError(f"{where} reads its key from ${api_key_env}, which is not set")
        return raw
    if api_key_file:
        try:
            return api_key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{where} reads its key from {api_key_file}, which cannot be read: {exc.strerror}"
            ) from None
    raise ConfigError(f"{where} needs api_key_env or api_key_file: keys stay out of config files")


def read_keys_file(path: Path, where: str) -> dict[str, str]:
    """A TOML file of ``tenant = "key"`` lines, readable by its owner only."""
    try:
        mode = path.stat().st_mode
        text = path.read_bytes().decode()
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{where}: keys_file {path} cannot be read: {reason}") from None
    if mode & 0o077:
        # Every key of every tenant in one file: others on the host must not read it.
        raise ConfigError(
            f"{where}: keys_file {path} may be read by other users (mode "
            f"{stat.S_IMODE(mode):04o}); make it its owner's alone: chmod 600 {path}"
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message quotes no value, only where the syntax broke.
        raise ConfigError(
            f'{where}: keys_file {path} is not a TOML file of tenant = "key" lines: {exc}'
        ) from None
    keys: dict[str, str] = {}
    for name, value in data.items():
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(
                f'{where}: keys_file {path}: {name} must be a key in quotes (name = "key"), '
                f"got a {type(value).__name__}"
            )
        keys[name] = value.strip()
    return keys


def _own_tables(tenants: dict[str, dict[str, Any]] | list[str], where: str) -> dict[str, Any]:
    """Each listed tenant's own settings (none for a list of names)."""
    if isinstance(tenants, list):
        repeated = sorted({name for name in tenants if tenants.count(name) > 1})
        if repeated:
            raise ConfigError(f"{where}: tenants lists {', '.join(repeated)} more than once")
        return {name: {} for name in tenants}
    return dict(tenants)


def _check_name(tenant: str, prefix: str, where: str) -> None:
    if not NAME.fullmatch(tenant):
        raise ConfigError(
            f"{where}: tenant name {tenant!r} must start with a letter or digit and hold only "
            "letters, digits, '.', '-' and '_' (it is a destination name)"
        )
    if len(prefix + tenant) > NAME_LIMIT:
        raise ConfigError(
            f"{where}: destination name {prefix + tenant!r} is longer than {NAME_LIMIT} "
            "characters (the outbox's limit); shorten the tenant or the prefix"
        )


def _tenant_key(
    tenant: str,
    table: dict[str, Any],
    keys: dict[str, str],
    entry: DestinationSet,
    at: str,
) -> tuple[str, str]:
    """The tenant's key and where it came from: its own source, the keys file or the template."""
    env, file = table.get("api_key_env"), table.get("api_key_file")
    if env or file:
        if tenant in keys:
            raise ConfigError(
                f"{at} has a key in keys_file {entry.keys_file} and its own "
                f"{'api_key_env' if env else 'api_key_file'}: keep one"
            )
        path = Path(file) if file else None
        return read_key(at, env, path), f"${env}" if env else f"{path}"
    if tenant in keys:
        return keys[tenant], f"keys_file {entry.keys_file}"
    if entry.api_key_env:
        variable = entry.api_key_env.replace("{NAME}", re.sub(r"[-.]", "_", tenant).upper())
        return read_key(at, variable, None), f"${variable}"
    raise ConfigError(
        f'{at} has no key: add {tenant} = "…" to keys_file'
        + (f" {entry.keys_file}" if entry.keys_file else "")
        + ", or give it api_key_env or api_key_file"
    )
