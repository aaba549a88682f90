"""enqueue() down its outbox fallback: Redis unreachable, and what enqueue() then says."""

from __future__ import annotations

import pytest

import relay

NO_REDIS = "redis://127.0.0.1:9"  # refused at once: the fallback path, without waiting


def unavailable(destination: str = "servoki", event_id: str | None = None) -> str:
    """The message of the RelayUnavailable one enqueue() raises."""
    with pytest.raises(relay.RelayUnavailable) as info:
        relay.enqueue(destination, {"event_type": "purchase"}, event_id=event_id)
    return str(info.value)
