"""Flask: ``Relay(app)`` or ``relay_ext.init_app(app)`` in an application factory.

    from flask import Flask
    from relay.contrib.flask import Relay

    app = Flask(__name__)
    app.config["RELAY_REDIS_URL"] = "redis://localhost:6379/0"   # or RELAY_* variables
    events = Relay(app)

    @app.post("/checkout")
    def checkout():
        ...
        events.enqueue("servoki", {"event_type": "purchase", "value": 49.9, "currency": "EUR"})

``init_app`` reads the ``RELAY_*`` keys of ``app.config`` over the environment, checks them at
start (a bad setting fails the app's start, not the first request) and makes this app's
enqueuer the process's default, so ``relay.enqueue()`` works in handlers too. Under gunicorn
``--preload`` the app is built before the fork: redis-py opens connections lazily and per
process, so no connection is shared across workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from flask import Flask

from relay.contrib import settings_overrides
from relay.enqueue import Enqueuer, configure
from relay.settings import load_settings

EXTENSION = "relay"


class Relay:
    """The relay as a Flask extension."""

    def __init__(self, app: Flask | None = None) -> None:
        self._enqueuer: Enqueuer | None = None
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and check the relay's settings for ``app``; register the extension."""
        settings = load_settings(**settings_overrides(app.config))
        self._enqueuer = configure(settings)
        app.extensions[EXTENSION] = self

    @property
    def enqueuer(self) -> Enqueuer:
        if self._enqueuer is None:
            raise RuntimeError("relay.contrib.flask.Relay is not set up: call init_app(app) first")
        return self._enqueuer

    def enqueue(
        self, destination: str, payload: Mapping[str, Any], *, event_id: str | None = None
    ) -> str:
        """:func:`relay.enqueue` with this app's settings; returns the event id."""
        event_id, item = self.enqueuer.encode(destination, payload, event_id)
        self.enqueuer.push([item])
        return event_id

    def enqueue_many(self, destination: str, payloads: Iterable[Mapping[str, Any]]) -> list[str]:
        """:func:`relay.enqueue_many` with this app's settings: one write, all or nothing."""
        ids, items = self.enqueuer.encode_many(destination, payloads)
        self.enqueuer.push(items)
        return ids
