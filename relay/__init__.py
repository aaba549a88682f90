"""relay: report conversions in one fast call; workers deliver them exactly once in effect.

    import relay
    relay.enqueue("servoki", {"event_type": "purchase", "value": 49.9, "currency": "EUR"})

Importing relay loads no Celery, SQLAlchemy or httpx: the enqueue path stays light.
``relay.enqueue_in`` (the transactional enqueue, :mod:`relay.transactional`) takes a SQLAlchemy
Session or Connection, so it loads SQLAlchemy when first used.
"""

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from relay.enqueue import aenqueue, configure, enqueue, enqueue_many
from relay.errors import (
    ConfigError,
    InvalidEvent,
    RelayError,
    RelayUnavailable,
    UnknownDestination,
)

if TYPE_CHECKING:
    from relay.transactional import enqueue_in


def __getattr__(name: str) -> Any:
    if name == "enqueue_in":
        from relay.transactional import enqueue_in  # SQLAlchemy loads with its first use

        return enqueue_in
    raise AttributeError(f"module 'relay' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "InvalidEvent",
    "RelayError",
    "RelayUnavailable",
    "UnknownDestination",
    "__version__",
    "aenqueue",
    "configure",
    "enqueue",
    "enqueue_in",
    "enqueue_many",
]
