"""Typed settings, read once at entry points.

Sources, strongest first: ``RELAY_*`` environment variables, a ``.env`` file in the working
directory, and the optional TOML file named by ``RELAY_CONFIG``. The TOML file holds the same
settings as top-level keys plus ``[destinations.NAME]`` tables for more named destinations::

    [destinations.datalook-eu]
    kind = "datalook"
    url = "https://eu.datalook.example"
    api_key_env = "DATALOOK_EU_API_KEY"      # or api_key_file = "/run/secrets/datalook-eu"

``[destination_sets.NAME]`` tables for many destinations of one kind, one per tenant key
(:mod:`relay.destinations.sets`)::

    [destination_sets.customers]
    kind = "datalook"
    url = "https://eu.datalook.example"
    keys_file = "/run/secrets/customers.toml"  # acme = "dl_live_…", one line per tenant

and ``[retry.NAME]`` tables that give one destination its own retry policy::

    [retry.servoki]
    max_attempts = 10

Keys are held as ``SecretStr``: they never appear in ``repr``, logs or error messages.

The settings know no API: each destination kind's variables (``RELAY_SERVOKI_API_KEY``,
``RELAY_DATALOOK_URL``, …), defaults, key shape and table keys come from its class in the
registry (:mod:`relay.destinations`), which this module imports and never the reverse.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, create_model
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from relay.destinations import KINDS, Destination, DestinationConfig, RateLimit, destination_class
from relay.destinations.sets import DestinationSet, Tenant, expand, read_key
from relay.errors import ConfigError
from relay.urls import safe_url

__all__ = [
    "DestinationConfig",
    "DestinationEntry",
    "DestinationSet",
    "RetryEntry",
    "Settings",
    "load_settings",
]


class DestinationEntry(BaseModel):
    """One ``[destinations.NAME]`` table of the TOML file.

    Besides these keys a table holds the settings of its kind's own (``Destination.options``,
    such as Servoki's ``site``); they are checked against the registry when the destinations
    are built.
    """

    model_config = ConfigDict(extra="allow")

    kind: str
    url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    rate_limit: str | None = None


class RetryEntry(BaseModel):
    """One ``[retry.NAME]`` table: a destination's own retry policy (unset: the global one)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(default=None, gt=0)
    max_age_seconds: float | None = Field(default=None, gt=0)
    backoff_base: float | None = Field(default=None, gt=0)
    backoff_cap: float | None = Field(default=None, gt=0)
    retry_after_cap: float | None = Field(default=None, gt=0)


def _kind_fields() -> dict[str, Any]:
    """The ``RELAY_<KIND>_*`` fields of every kind registered so far, from its class."""
    fields: dict[str, Any] = {}
    for kind, cls in KINDS.items():
        fields[f"{kind}_api_key"] = (SecretStr | None, None)
        fields[f"{kind}_url"] = (str | None, cls.default_url)
        fields[f"{kind}_rate_limit"] = (str, cls.default_rate_limit)
        for option in cls.options:
            kind_type: Any = str if option.default is not None else str | None
            pattern = None if option.pattern is None else f"^(?:{option.pattern})$"
            fields[f"{kind}_{option.name}"] = (
                kind_type,
                Field(default=option.default, pattern=pattern),
            )
    return fields


if TYPE_CHECKING:
    _KindSettings = BaseSettings
else:
    # Built once, from the kinds registered when the settings are first imported (the built-in
    # ones); a kind registered later is configured with [destinations.NAME] tables.
    _KindSettings = create_model("_KindSettings", __base__=BaseSettings, **_kind_fields())


class Settings(_KindSettings):
    """All of the relay's settings. Build it with :func:`load_settings`.

    Besides the fields below, each destination kind has ``<kind>_api_key``, ``<kind>_url``,
    ``<kind>_rate_limit`` and one field per option (``servoki_site``, …), from its class.
    """

    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Path(".relay")
    namespace: str = "relay"
    redis_url: str | None = None
    database_url: str | None = None
    config: Path | None = None

    # Arrivals may land this long after their slot (network, scheduling); the buckets leave
    # room for it. Measured in bench/limits.py.
    limit_jitter: float = Field(default=0.1, ge=0, le=5)
    limit_pause_cap: float = Field(default=300.0, gt=0)
    limit_recovery_seconds: float = Field(default=60.0, gt=0)

    max_event_bytes: int = Field(default=32 * 1024, gt=0)
    enqueue_timeout: float = Field(default=0.1, gt=0)

    batch_size: int = Field(default=500, gt=0, le=5000)
    dispatch_batch: int = Field(default=50, gt=0, le=1000)
    send_concurrency: int = Field(default=4, gt=0, le=64)
    lease_seconds: float = Field(default=60.0, gt=0)
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    pump_seconds: float = Field(default=15.0, gt=0)
    max_attempts: int = Field(default=25, gt=0)
    max_age_seconds: float = Field(default=72 * 3600.0, gt=0)
    backoff_base: float = Field(default=2.0, gt=0)
    backoff_cap: float = Field(default=1800.0, gt=0)
    retry_after_cap: float = Field(default=3600.0, gt=0)
    pause_probe_seconds: float = Field(default=30.0, gt=0)
    connect_timeout: float = Field(default=3.0, gt=0)
    read_timeout: float = Field(default=10.0, gt=0)
    # Operations: delivered and discarded rows are pruned after this long (dedup holds within
    # it); Prometheus metrics are served by the Celery worker on metrics_port when it is set.
    retention_seconds: float = Field(default=7 * 86400.0, gt=0)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_addr: str = "0.0.0.0"

    destinations: dict[str, DestinationEntry] = Field(default_factory=dict)
    destination_sets: dict[str, DestinationSet] = Field(default_factory=dict)
    retry: dict[str, RetryEntry] = Field(default_factory=dict)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, dotenv_settings, _TomlSource(settings_cls)

    if TYPE_CHECKING:
        # The kinds' fields (servoki_api_key, datalook_url, …) are made from the registry, so
        # mypy cannot list them: it takes any keyword. The relay reads them through
        # destination_configs() and kind_environment(), which mypy checks.
        def __init__(self, **values: Any) -> None: ...

    # -- derived values ---------------------------------------------------------------

    @property
    def resolved_database_url(self) -> str:
        """The outbox database URL: ``RELAY_DATABASE_URL`` or SQLite under ``home``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'outbox.db').resolve()}"

    @property
    def embedded_redis(self) -> bool:
        """True when no ``RELAY_REDIS_URL`` is set and the relay runs its own redis-server."""
        return not self.redis_url

    @property
    def redis_socket(self) -> Path:
        """Where the embedded redis-server listens."""
        return (self.home / "redis.sock").resolve()

    @property
    def resolved_redis_url(self) -> str:
        """The Redis URL the relay uses, embedded or configured."""
        return self.redis_url or f"unix://{self.redis_socket}"

    @property
    def send_seconds(self) -> float:
        """The longest one request can take: connect plus read timeout."""
        return self.connect_timeout + self.read_timeout

    def check_lease(self) -> None:
        """A lease must outlast a slow round's requests, or one event could go out twice."""
        if self.lease_seconds < 2 * self.send_seconds:
            raise ConfigError(
                f"RELAY_LEASE_SECONDS ({self.lease_seconds:g}) must be at least twice "
                f"RELAY_CONNECT_TIMEOUT + RELAY_READ_TIMEOUT ({self.send_seconds:g}): a row is "
                "only sent while one request fits in what is left of its lease; raise the lease "
                "or lower the timeouts"
            )

    def destination_configs(self) -> dict[str, DestinationConfig]:
        """Every enabled destination, checked. Raises ConfigError naming the bad setting."""
        found: dict[str, DestinationConfig] = {}
        for cls in KINDS.values():
            config = self._kind_destination(cls)
            if config is not None:
                found[cls.kind] = config
        for name, entry in self.destinations.items():
            found[name] = self._named_destination(name, entry)
            self._checked_rate(found[name].rate_limit, f"rate_limit of [destinations.{name}]")
        for set_name, members in self.destination_sets.items():
            for tenant in expand(set_name, members):
                _check_unique(tenant, found)
                found[tenant.name] = self._tenant_destination(tenant)
        for name in self.retry:
            if name not in found:
                raise ConfigError(
                    f"[retry.{name}] in RELAY_CONFIG names no enabled destination (enabled: "
                    f"{', '.join(found) or 'none'}); fix the name or set that destination's key"
                )
        return found

    def kind_environment(self) -> dict[str, str]:
        """The ``RELAY_<KIND>_*`` variables that give a child process these kinds' settings.

        Keys are included in clear: pass the result to a process, never print it.
        """
        env: dict[str, str] = {}
        for name in _kind_fields():
            value = getattr(self, name, None)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            if value is not None:
                env[f"RELAY_{name.upper()}"] = str(value)
        return env

    def key_settings(self) -> list[str]:
        """The variables that enable a destination (``RELAY_SERVOKI_API_KEY``, …)."""
        return [f"RELAY_{kind.upper()}_API_KEY" for kind in KINDS if self._has_fields(kind)]

    def _has_fields(self, kind: str) -> bool:
        # A kind registered after the settings were first imported has no RELAY_* variables.
        return f"{kind}_api_key" in type(self).model_fields

    def _kind_destination(self, cls: type[Destination]) -> DestinationConfig | None:
        """The destination named after its kind, set by ``RELAY_<KIND>_*``, if its key is set."""
        kind = cls.kind
        if not self._has_fields(kind):
            return None
        key: SecretStr | None = getattr(self, f"{kind}_api_key")
        if key is None:
            return None
        setting = f"RELAY_{kind.upper()}_"
        url: str | None = getattr(self, f"{kind}_url")
        if not url:
            raise ConfigError(
                f"{setting}URL is required when {setting}API_KEY is set: {cls.url_required}"
            )
        return DestinationConfig(
            name=kind,
            kind=kind,
            url=_checked_url(url, f"{setting}URL"),
            url_setting=f"{setting}URL",
            api_key=_checked_key(cls, key, f"{setting}API_KEY"),
            rate_limit=self._checked_rate(
                getattr(self, f"{kind}_rate_limit"), f"{setting}RATE_LIMIT"
            ),
            options=self._kind_options(cls, lambda name: getattr(self, f"{kind}_{name}")),
        )

    def _kind_options(
        self, cls: type[Destination], own: Callable[[str], str | None]
    ) -> dict[str, str]:
        """The values of ``cls``'s options: ``own(name)`` for per-destination ones, the kind's
        ``RELAY_<KIND>_<NAME>`` (or the default) for the ones every destination shares."""
        values: dict[str, str] = {}
        for option in cls.options:
            if option.per_destination:
                value = own(option.name)
                value = option.default if value is None else value
            elif self._has_fields(cls.kind):
                value = getattr(self, f"{cls.kind}_{option.name}")
            else:
                value = option.default
            if value is not None:
                values[option.name] = value
        return values

    def _named_destination(self, name: str, entry: DestinationEntry) -> DestinationConfig:
        where = f"[destinations.{name}] in RELAY_CONFIG"
        cls = _table_kind(entry.kind, where)
        extra = _table_options(entry, cls, where)
        url = entry.url or cls.default_url
        if not url:
            raise ConfigError(f'{where} needs url = "https://…": {cls.url_required}')
        raw = read_key(where, entry.api_key_env, entry.api_key_file)
        return DestinationConfig(
            name=name,
            kind=cls.kind,
            url=_checked_url(url, f"url of {where}"),
            url_setting=f"url of {where}",
            api_key=_checked_key(cls, SecretStr(raw), f"the key of {where}"),
            rate_limit=entry.rate_limit or cls.default_rate_limit,
            options=self._kind_options(cls, extra.get),
        )

    def _tenant_destination(self, tenant: Tenant) -> DestinationConfig:
        """One tenant of a ``[destination_sets.NAME]`` table, checked like a named table."""
        where = tenant.where
        try:
            entry = DestinationEntry(**tenant.table)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ConfigError(f"{where}: {problems}") from None
        cls = _table_kind(entry.kind, where)
        extra = _table_options(entry, cls, where)
        url = entry.url or cls.default_url
        if not url:
            raise ConfigError(f'{where} needs url = "https://…": {cls.url_required}')
        rate_limit = entry.rate_limit or cls.default_rate_limit
        return DestinationConfig(
            name=tenant.name,
            kind=cls.kind,
            url=_checked_url(url, f"url of {where}"),
            url_setting=f"url of {where}",
            api_key=_checked_key(
                cls, SecretStr(tenant.key), f"the key of {where} (from {tenant.key_origin})"
            ),
            rate_limit=self._checked_rate(rate_limit, f"rate_limit of {where}"),
            options=self._kind_options(cls, extra.get),
        )

    def retry_settings(self, destination: str) -> dict[str, Any]:
        """The retry policy of ``destination``: its ``[retry.NAME]`` table over the globals."""
        values = {
            "max_attempts": self.max_attempts,
            "max_age_seconds": self.max_age_seconds,
            "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap,
            "retry_after_cap": self.retry_after_cap,
        }
        entry = self.retry.get(destination)
        if entry is not None:
            values.update(entry.model_dump(exclude_none=True))
        return values

    def _checked_rate(self, text: str, setting: str) -> str:
        """``text`` if it is a limit the buckets can pace."""
        try:
            RateLimit.parse(text).check_paceable()
        except ValueError as exc:
            raise ConfigError(f"{setting}: {exc}") from None
        return text


def load_settings(**overrides: Any) -> Settings:
    """Read the settings from the environment, ``.env`` and ``RELAY_CONFIG``; check them."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"RELAY_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None
    settings.destination_configs()
    return settings


class _TomlSource(PydanticBaseSettingsSource):
    """Reads the TOML file named by RELAY_CONFIG (weakest source)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get("RELAY_CONFIG")
        if not path:
            return {}
        try:
            with open(path, "rb") as handle:
                return tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(
                f"RELAY_CONFIG names {path!r}, which does not exist; fix the path or unset it"
            ) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"RELAY_CONFIG file {path!r} is not valid TOML: {exc}") from None


def _checked_key(cls: type[Destination], key: SecretStr, setting: str) -> SecretStr:
    if not cls.key_is_well_formed(key.get_secret_value()):
        raise ConfigError(
            f"{setting} does not look like a {cls.kind} key (expected {cls.key_shape}), with "
            f"{cls.key_rule}; copy the key again from the dashboard"
        )
    return key


def _check_unique(tenant: Tenant, found: dict[str, DestinationConfig]) -> None:
    """A tenant's name must be new: two destinations of one name would share one outbox."""
    other = found.get(tenant.name)
    if other is None:
        return
    if other.url_setting.startswith("url of "):
        place = other.url_setting.removeprefix("url of ")
    else:
        place = f"the {other.kind} destination of RELAY_{other.kind.upper()}_API_KEY"
    raise ConfigError(
        f"{tenant.where} is named {tenant.name!r}, like {place}: destination names are unique "
        "(enqueue() and the outbox know a destination by its name); rename one, or give the "
        "set a prefix"
    )


def _table_kind(kind: str, where: str) -> type[Destination]:
    try:
        return destination_class(kind)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


_TABLE_KEYS = tuple(DestinationEntry.model_fields)


def _table_options(entry: DestinationEntry, cls: type[Destination], where: str) -> dict[str, Any]:
    """The table's settings of its kind's own, checked like the kind's variables.

    A key that is an option of another kind is ignored, as before kinds declared their own
    (a DataLook table with a Servoki ``site`` loads); any other key is refused.
    """
    own = {option.name: option for option in cls.options if option.per_destination}
    shared = {o.name for kind in KINDS.values() for o in kind.options if o.per_destination}
    values: dict[str, Any] = {}
    for key, value in (entry.model_extra or {}).items():
        option = own.get(key)
        if option is None:
            if key in shared:
                continue
            allowed = ", ".join([*_TABLE_KEYS, *own])
            raise ConfigError(f"{where}: {key!r} is not a {cls.kind} setting (allowed: {allowed})")
        if not isinstance(value, str):
            raise ConfigError(f"{where}: {key} must be a string, got {value!r}")
        if option.pattern is not None and re.fullmatch(option.pattern, value) is None:
            raise ConfigError(f"{where}: {key} must match {option.pattern}, got {value!r}")
        values[key] = value
    return values


_LOOPBACK_NAMES = ("localhost",)


def _checked_url(url: str, setting: str) -> str:
    """A destination's base URL: https://, or http:// to a loopback host (the sandbox).

    The API key travels in a header of every request, so plain HTTP to any other host would
    send it in cleartext. The URL may hold no credentials, query or fragment: the relay
    appends the API's path to it, and it is shown in messages and ``repr``.
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("https", "http"):
        raise ConfigError(
            f"{setting} must be an http(s) URL such as https://host, got {safe_url(url)!r}"
        )
    if "@" in rest:
        raise ConfigError(
            f"{setting} must not hold a user or password (user:password@host): the relay "
            "authenticates with the API key; remove them from the URL"
        )
    if "?" in rest or "#" in rest:
        part = "query string" if "?" in rest.split("#", 1)[0] else "fragment"
        raise ConfigError(
            f"{setting} must be a base URL such as https://host or https://host/prefix, "
            f"without a {part} (?… or #…): the relay appends the API's path to it"
        )
    try:
        parts = urlsplit(url)
        host = parts.hostname if parts.port is None or parts.port > 0 else None
    except ValueError:  # a port that is no number, a broken [IPv6] address
        host = None
    if not host:
        raise ConfigError(
            f"{setting} has no valid host and port, got {url!r}; use https://host or "
            "https://host:port"
        )
    if scheme.lower() == "http" and not is_loopback(host):
        raise ConfigError(
            f"{setting} must use https:// (got {url!r}): over http:// the API key would "
            "travel in cleartext; plain http:// is only allowed to loopback hosts "
            "(127.0.0.1, ::1, localhost), such as the sandbox"
        )
    return url.rstrip("/")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, without brackets) is this machine."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
