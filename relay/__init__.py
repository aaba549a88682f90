"""relay: report conversions in one fast call; workers deliver them exactly once in effect.

    import relay
    relay.enqueue("servoki", {"event_type": "purchase", "value": 49.9, "currency": "EUR"})

Importing relay loads no Celery, SQLAlchemy or httpx: the enqueue path stays light.
"""

__version__ = "0.1.0"

from relay.enqueue import aenqueue, configure, enqueue, enqueue_many
from relay.errors import (
    ConfigError,
    InvalidEvent,
    RelayError,
    RelayUnavailable,
    UnknownDestination,
)

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
    "enqueue_many",
]
