"""Pure, in-memory state of the sandbox: rate windows, counters, stored events, fault switches.

Nothing here does I/O, so every rule can be read (and unit-tested) without a server.

Rate-limit accounting (the rule the relay's own limiter must respect):

* A window is strict and sliding: an arrival at time ``t`` is inside the window at ``now`` while
  ``now - window_s < t``. A request is admitted while fewer than ``limit`` arrivals of its scope
  are inside the window.
* Every request that passed authentication and was admitted counts, whatever its final status
  (202, 204, 400 or 404): the limiter sits in front of validation, as in the real APIs.
* Requests answered 429 do **not** count, so a client that backs off for ``Retry-After`` seconds
  always finds a free slot. Requests answered by an injected fault (outage, error, drop) never
  reach the limiter and do not count either.
* ``Retry-After`` is the whole number of seconds (rounded up, at least 1) until the oldest
  arrival in the window leaves it.

The peak of a scope is the largest number of arrivals ever seen inside one window; it is updated
on each recorded arrival. Windows are kept (and peaks measured) even when a limit is disabled,
using the last configured window length, so benchmarks can check a client's own pacing.
"""

from __future__ import annotations

import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

# The relay's own limit value (re-exported: the sandbox's modules and tests import it here).
from relay.destinations.rates import RateLimit as RateLimit

Api = Literal["servoki", "datalook"]
APIS: Final[tuple[Api, ...]] = ("servoki", "datalook")

DEFAULT_SITES: Final[frozenset[str]] = frozenset({"example.com", "shop.example.com", "12345"})
# The documented limits (shared/api/), which the sandbox enforces unless told otherwise.
SERVOKI_LIMIT: Final = RateLimit(600, 60.0)
DATALOOK_LIMIT: Final = RateLimit(500, 10.0)


class ScopedWindows:
    """Sliding windows of arrival times, one deque per scope (client IP or key id)."""

    __slots__ = ("_arrivals", "limit", "peak", "peak_by_scope", "window_s")

    def __init__(self, limit: RateLimit | None, window_s: float) -> None:
        self.limit = limit
        self.window_s = limit.window if limit is not None else window_s
        self._arrivals: dict[str, deque[float]] = {}
        self.peak = 0
        self.peak_by_scope: dict[str, int] = {}

    def admit(self, scope: str, now: float) -> int | None:
        """Record an arrival and return None, or return Retry-After seconds without recording."""
        arrivals = self._arrivals.get(scope)
        if arrivals is None:
            arrivals = self._arrivals[scope] = deque()
        horizon = now - self.window_s
        while arrivals and arrivals[0] <= horizon:
            arrivals.popleft()
        limit = self.limit
        if limit is not None and len(arrivals) >= limit.limit:
            return max(1, math.ceil(arrivals[0] - horizon))
        arrivals.append(now)
        count = len(arrivals)
        if count > self.peak_by_scope.get(scope, 0):
            self.peak_by_scope[scope] = count
            if count > self.peak:
                self.peak = count
        return None


@dataclass(slots=True)
class StoredEvent:
    """One accepted event as the sandbox kept it."""

    body: dict[str, Any]
    t: float
    received_at: float
    scope: str

    def to_json(self) -> dict[str, Any]:
        return {
            "body": self.body,
            "t": self.t,
            "received_at": self.received_at,
            "scope": self.scope,
        }


@dataclass(slots=True)
class ApiState:
    """Counters, windows and logs of one API."""

    windows: ScopedWindows
    requests: int = 0
    accepted: int = 0
    duplicates: int = 0
    rate_limited: int = 0
    dropped: int = 0
    pii_stripped: int = 0
    overlapping: int = 0
    """Requests that arrived while another request for the same event was still open."""
    in_flight: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    events: list[StoredEvent] = field(default_factory=list)
    # (monotonic arrival, status or 0 when dropped, scope, Retry-After sent or None)
    log: list[tuple[float, int, str, int | None]] = field(default_factory=list)

    def record(self, t: float, status: int, scope: str, retry_after: int | None = None) -> None:
        """Count one answered (or dropped, status 0) request."""
        self.requests += 1
        if status == 0:
            self.dropped += 1
        else:
            self.statuses[status] += 1
            if status == 429:
                self.rate_limited += 1
        self.log.append((t, status, scope, retry_after))

    def stats_json(self) -> dict[str, Any]:
        limit = self.windows.limit
        return {
            "requests": self.requests,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rate_limited": self.rate_limited,
            "dropped": self.dropped,
            "pii_stripped": self.pii_stripped,
            "overlapping": self.overlapping,
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "peak_window": self.windows.peak,
            "peak_by_scope": dict(self.windows.peak_by_scope),
            "limit": None if limit is None else str(limit),
            "window_s": self.windows.window_s,
        }

    def requests_json(self) -> list[dict[str, Any]]:
        return [
            {"t": t, "status": status, "scope": scope, "retry_after": retry_after}
            for t, status, scope, retry_after in self.log
        ]


def _share(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
    return float(value)


def _whole(payload: Mapping[str, Any], name: str, low: int, high: int | None = None) -> int:
    value = payload[name]
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    if not ok or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a whole number {bounds}, got {value!r}")
    return int(value)


@dataclass(slots=True)
class Faults:
    """Switches that make the sandbox misbehave on purpose; all off by default."""

    error_rate: float = 0.0
    error_status: int = 503
    latency_ms: float = 0.0
    drop_rate: float = 0.0
    drop_after_rate: float = 0.0
    outage: bool = False
    force_429: int = 0
    retry_after: int = 2
    trickle_ms: float = 0.0
    """Answer at once, then send the body a byte at a time over this long (a slow proxy)."""
    misdirect_status: int = 0
    """Answer every request with this 2xx/3xx status and an HTML page, as a website at a
    mistyped URL would (0: off)."""
    apis: frozenset[str] = frozenset(APIS)

    @property
    def active(self) -> bool:
        return bool(
            self.error_rate
            or self.latency_ms
            or self.drop_rate
            or self.drop_after_rate
            or self.outage
            or self.force_429
            or self.trickle_ms
            or self.misdirect_status
        )

    def update(self, payload: Mapping[str, Any]) -> None:
        """Apply a partial update; raise ValueError naming the first bad field (nothing changed)."""
        unknown = sorted(set(payload) - set(self.__slots__))
        if unknown:
            raise ValueError(f"unknown fault field(s): {', '.join(unknown)}")
        new = Faults(**{name: getattr(self, name) for name in self.__slots__})
        for name, parse in _FAULT_FIELDS.items():
            if name in payload:
                setattr(new, name, parse(payload, name))
        for name in self.__slots__:
            setattr(self, name, getattr(new, name))

    def to_json(self) -> dict[str, Any]:
        return {
            "error_rate": self.error_rate,
            "error_status": self.error_status,
            "latency_ms": self.latency_ms,
            "drop_rate": self.drop_rate,
            "drop_after_rate": self.drop_after_rate,
            "outage": self.outage,
            "force_429": self.force_429,
            "retry_after": self.retry_after,
            "trickle_ms": self.trickle_ms,
            "misdirect_status": self.misdirect_status,
            "apis": sorted(self.apis),
        }


def _milliseconds(payload: Mapping[str, Any], name: str) -> float:
    value = payload[name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _misdirect(payload: Mapping[str, Any], name: str) -> int:
    off = payload[name] == 0 and type(payload[name]) is int
    return 0 if off else _whole(payload, name, 200, 399)


def _flag(payload: Mapping[str, Any], name: str) -> bool:
    value = payload[name]
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


_FAULT_FIELDS: Final[dict[str, Callable[[Mapping[str, Any], str], Any]]] = {
    # Checked in this order: an update with several bad fields names the first.
    "error_rate": _share,
    "drop_rate": _share,
    "drop_after_rate": _share,
    "error_status": lambda payload, name: _whole(payload, name, 400, 599),
    "latency_ms": _milliseconds,
    "trickle_ms": _milliseconds,
    "misdirect_status": _misdirect,
    "outage": _flag,
    "force_429": lambda payload, name: _whole(payload, name, 0),
    "retry_after": lambda payload, name: _whole(payload, name, 0),
    "apis": lambda payload, name: _parse_apis(payload[name]),
}
"""How each fault field of a control update is checked and read."""


def _parse_apis(value: Any) -> frozenset[str]:
    if value is None:
        return frozenset(APIS)
    if not isinstance(value, list) or not all(item in APIS for item in value):
        raise ValueError(f'apis must be a list of "servoki" / "datalook", got {value!r}')
    return frozenset(value)


def _parse_optional_limit(value: Any, name: str) -> RateLimit | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f'{name} must be a string such as "600/60s" or null, got {value!r}')
    try:
        return RateLimit.parse(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc


def normalize_site(site: str) -> str:
    """Sites compare case-insensitively (domains) or as digit strings (numeric codes)."""
    return site.strip().lower()


@dataclass(slots=True)
class SandboxConfig:
    """What the sandbox accepts; survives ``reset``."""

    servoki_limit: RateLimit | None = SERVOKI_LIMIT
    datalook_limit: RateLimit | None = DATALOOK_LIMIT
    sites: frozenset[str] = DEFAULT_SITES
    seed: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "servoki_limit": None if self.servoki_limit is None else str(self.servoki_limit),
            "datalook_limit": None if self.datalook_limit is None else str(self.datalook_limit),
            "sites": sorted(self.sites),
        }


class SandboxState:
    """Everything the running sandbox knows; owned by one event loop, so no locks."""

    def __init__(self, config: SandboxConfig) -> None:
        # A private copy: control calls mutate it, the caller's object stays as given.
        self.config = replace(config, sites=frozenset(normalize_site(s) for s in config.sites))
        self.rng = random.Random(config.seed)
        self.revoked: set[str] = set()
        self.faults = Faults()
        self.seen_event_ids: set[str] = set()
        self.servoki = ApiState(ScopedWindows(config.servoki_limit, 60.0))
        self.datalook = ApiState(ScopedWindows(config.datalook_limit, 10.0))

    def api(self, name: Api) -> ApiState:
        return self.servoki if name == "servoki" else self.datalook

    def set_faults(self, payload: Mapping[str, Any]) -> None:
        """Partial fault update; an integer ``seed`` re-seeds the fault dice for repeatable runs."""
        fields = dict(payload)
        seed = fields.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer, got {seed!r}")
        self.faults.update(fields)
        if seed is not None:
            self.rng.seed(seed)

    def reset(self) -> None:
        """Forget events, counters, windows, faults, revocations and dedup ids; keep config."""
        self.revoked.clear()
        self.faults = Faults()
        self.seen_event_ids.clear()
        self.servoki = ApiState(ScopedWindows(self.config.servoki_limit, 60.0))
        self.datalook = ApiState(ScopedWindows(self.config.datalook_limit, 10.0))

    def configure(self, payload: Mapping[str, Any]) -> None:
        """Partial config update; a changed limit restarts that API's windows and peaks."""
        unknown = sorted(set(payload) - {"servoki_limit", "datalook_limit", "sites"})
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        limits: dict[Api, RateLimit | None] = {}
        for api in APIS:
            key = f"{api}_limit"
            if key in payload:
                limits[api] = _parse_optional_limit(payload[key], key)
        sites = payload.get("sites")
        if sites is not None:
            sites = _parse_sites(sites)
            self.config.sites = sites
        for api, limit in limits.items():
            state = self.api(api)
            state.windows = ScopedWindows(limit, state.windows.window_s)
            if api == "servoki":
                self.config.servoki_limit = limit
            else:
                self.config.datalook_limit = limit

    def stats_json(self) -> dict[str, Any]:
        return {"servoki": self.servoki.stats_json(), "datalook": self.datalook.stats_json()}


def _parse_sites(value: Any) -> frozenset[str]:
    ok = isinstance(value, list) and all(
        isinstance(s, str | int) and not isinstance(s, bool) for s in value
    )
    if not ok:
        raise ValueError(f"sites must be a list of domains or numeric codes, got {value!r}")
    return frozenset(normalize_site(str(s)) for s in value)


def parse_sites(values: Iterable[str]) -> frozenset[str]:
    """Normalise site names given on the command line."""
    return frozenset(normalize_site(v) for v in values)
