"""Typed settings, read once at entry points.

Sources, strongest first: ``RELAY_*`` environment variables, a ``.env`` file in the working
directory, and the optional TOML file named by ``RELAY_CONFIG``. The TOML file holds the same
settings as top-level keys plus ``[destinations.NAME]`` tables for more named destinations::

    [destinations.datalook-eu]
    kind = "datalook"
    url = "https://eu.datalook.example"
    api_key_env = "DATALOOK_EU_API_KEY"      # or api_key_file = "/run/secrets/datalook-eu"

and ``[retry.NAME]`` tables that give one destination its own retry policy::

    [retry.servoki]
    max_attempts = 10

Keys are held as ``SecretStr``: they never appear in ``repr``, logs or error messages.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from relay.errors import ConfigError
from relay.urls import safe_url

Kind = Literal["servoki", "datalook"]

DEFAULT_SERVOKI_URL = "https://servoki.com"
DEFAULT_RATE_LIMITS: dict[str, str] = {"servoki": "600/60s", "datalook": "500/10s"}


class DestinationEntry(BaseModel):
    """One ``[destinations.NAME]`` table of the TOML file."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind
    url: str | None = None
    api_key_env: str | None = None
    api_key_file: Path | None = None
    site: str | None = None
    rate_limit: str | None = None


class RetryEntry(BaseModel):
    """One ``[retry.NAME]`` table: a destination's own retry policy (unset: the global one)."""

    model_config = ConfigDict(extra="forbid")

    max_attempts: int | None = Field(default=None, gt=0)
    max_age_seconds: float | None = Field(default=None, gt=0)
    backoff_base: float | None = Field(default=None, gt=0)
    backoff_cap: float | None = Field(default=None, gt=0)
    retry_after_cap: float | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class DestinationConfig:
    """Everything the relay knows about one enabled destination."""

    name: str
    kind: Kind
    url: str
    api_key: SecretStr = field(repr=False)
    site: str | None = None
    rate_limit: str = ""
    egress_scope: str = "global"
    """Servoki only: which egress-IP bucket requests consume (``RELAY_SERVOKI_EGRESS_SCOPE``)."""
    url_setting: str = ""
    """Where the URL is configured (``RELAY_DATALOOK_URL``, ``url of [destinations.NAME]``):
    what an operator must fix when the URL answers like no API would."""


class Settings(BaseSettings):
    """All of the relay's settings. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_", env_file=".env", extra="ignore", hide_input_in_errors=True
    )

    home: Path = Path(".relay")
    namespace: str = "relay"
    redis_url: str | None = None
    database_url: str | None = None
    config: Path | None = None

    servoki_api_key: SecretStr | None = None
    servoki_url: str = DEFAULT_SERVOKI_URL
    servoki_site: str | None = None
    servoki_rate_limit: str = DEFAULT_RATE_LIMITS["servoki"]
    datalook_api_key: SecretStr | None = None
    datalook_url: str | None = None
    datalook_rate_limit: str = DEFAULT_RATE_LIMITS["datalook"]
    # Servoki counts per egress IP: "global" (every host behind one NAT, the default), "host"
    # (each host its own IP), or any label naming an IP that a group of hosts shares.
    servoki_egress_scope: str = Field(default="global", pattern=r"^[A-Za-z0-9_.:\-]+$")
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
        if self.servoki_api_key is not None:
            found["servoki"] = DestinationConfig(
                name="servoki",
                kind="servoki",
                url=_checked_url(self.servoki_url, "RELAY_SERVOKI_URL"),
                url_setting="RELAY_SERVOKI_URL",
                api_key=_checked_key("servoki", self.servoki_api_key, "RELAY_SERVOKI_API_KEY"),
                site=self.servoki_site,
                rate_limit=self._checked_rate(self.servoki_rate_limit, "RELAY_SERVOKI_RATE_LIMIT"),
                egress_scope=self.servoki_egress_scope,
            )
        if self.datalook_api_key is not None:
            if not self.datalook_url:
                raise ConfigError(
                    "RELAY_DATALOOK_URL is required when RELAY_DATALOOK_API_KEY is set: DataLook "
                    "hosts are per account; copy the base URL from the DataLook dashboard"
                )
            found["datalook"] = DestinationConfig(
                name="datalook",
                kind="datalook",
                url=_checked_url(self.datalook_url, "RELAY_DATALOOK_URL"),
                url_setting="RELAY_DATALOOK_URL",
                api_key=_checked_key("datalook", self.datalook_api_key, "RELAY_DATALOOK_API_KEY"),
                rate_limit=self._checked_rate(
                    self.datalook_rate_limit, "RELAY_DATALOOK_RATE_LIMIT"
                ),
            )
        for name, entry in self.destinations.items():
            found[name] = _named_destination(name, entry, self.servoki_egress_scope)
            self._checked_rate(found[name].rate_limit, f"rate_limit of [destinations.{name}]")
        for name in self.retry:
            if name not in found:
                raise ConfigError(
                    f"[retry.{name}] in RELAY_CONFIG names no enabled destination (enabled: "
                    f"{', '.join(found) or 'none'}); fix the name or set that destination's key"
                )
        return found

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
        """``text`` if it is a limit the buckets can pace under the jitter margin."""
        from relay.limiter.budget import RateLimit, plan

        try:
            plan(RateLimit.parse(text), self.limit_jitter)
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


_KEY_SHAPES = {
    "servoki": ("servoki_<key>", "a key of at least 8 letters, digits, _ or -"),
    # A shorter secret is a key cut short when copied; it would also be too short to redact
    # from texts without masking ordinary words.
    "datalook": (
        "dl_live_<key_id>_<secret>",
        "a key id of letters and digits and a secret of at least 8 letters, digits, _ or -",
    ),
}


def _checked_key(kind: str, key: SecretStr, setting: str) -> SecretStr:
    from relay.destinations import key_is_well_formed

    if not key_is_well_formed(kind, key.get_secret_value()):
        shape, rule = _KEY_SHAPES[kind]
        raise ConfigError(
            f"{setting} does not look like a {kind} key (expected {shape}), with {rule}; "
            "copy the key again from the dashboard"
        )
    return key


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


def _named_destination(name: str, entry: DestinationEntry, egress_scope: str) -> DestinationConfig:
    where = f"[destinations.{name}] in RELAY_CONFIG"
    url = entry.url or (DEFAULT_SERVOKI_URL if entry.kind == "servoki" else None)
    if not url:
        raise ConfigError(f'{where} needs url = "https://…": DataLook hosts are per account')
    if entry.api_key_env:
        raw = os.environ.get(entry.api_key_env)
        if not raw:
            raise ConfigError(f"{where} reads its key from ${entry.api_key_env}, which is not set")
    elif entry.api_key_file:
        try:
            raw = entry.api_key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(
                f"{where} reads its key from {entry.api_key_file}, which cannot be read: "
                f"{exc.strerror}"
            ) from None
    else:
        raise ConfigError(
            f"{where} needs api_key_env or api_key_file: keys stay out of config files"
        )
    return DestinationConfig(
        name=name,
        kind=entry.kind,
        url=_checked_url(url, f"url of {where}"),
        url_setting=f"url of {where}",
        api_key=_checked_key(entry.kind, SecretStr(raw), f"the key of {where}"),
        site=entry.site,
        rate_limit=entry.rate_limit or DEFAULT_RATE_LIMITS[entry.kind],
        egress_scope=egress_scope,
    )
