"""Tests of the relay's users: events captured in memory, validated as ``enqueue()`` does.

With pytest (the plugin is registered when relay is installed), ask for ``relay_events``::

    def test_checkout(client, relay_events):
        client.post("/checkout", json={"order": 42})
        event = relay_events.of("servoki", "purchase").one()
        assert event.event_id == "order_42"

Elsewhere, :func:`capture` does the same in a ``with`` block. Nothing reaches Redis or a
database, and no ``RELAY_*`` setting is needed: each built-in destination gets a test key.
Importing this package loads no Celery, SQLAlchemy or httpx (nor pytest: the fixtures live in
:mod:`relay.testing.plugin`).
"""

from relay.testing.capture import Capture, capture, capture_settings, example_key
from relay.testing.events import CapturedEvent, Events

__all__ = ["Capture", "CapturedEvent", "Events", "capture", "capture_settings", "example_key"]
