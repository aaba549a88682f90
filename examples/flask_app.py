"""A small Flask shop that reports each captured payment to Servoki through the relay.

    export RELAY_SERVOKI_API_KEY=... RELAY_SERVOKI_SITE=shop.example
    .venv/bin/flask --app examples.flask_app run
    .venv/bin/gunicorn --preload -w 4 examples.flask_app:app      # in production
    .venv/bin/celery -A tasks worker -B                           # delivers the events

``/pay`` enqueues one event per request; ``/ping`` does the same work without it (the
baseline for the per-request overhead).
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

import relay
from relay.contrib.flask import Relay

app = Flask(__name__)
# RELAY_* keys of app.config (from your own config files) override RELAY_* variables.
app.config.from_prefixed_env(prefix="SHOP")  # e.g. SHOP_RELAY_REDIS_URL=… sets RELAY_REDIS_URL
events = Relay(app)


@app.errorhandler(relay.InvalidEvent)
def invalid_event(exc: relay.InvalidEvent) -> tuple[dict[str, str], int]:
    return {"error": str(exc)}, 400  # the field and what was wrong, nothing was written


@app.post("/pay")
def pay() -> dict[str, Any]:
    order = request.get_json()
    event_id = events.enqueue(
        "servoki",
        {"event_type": "purchase", "value": order["value"], "currency": order["currency"]},
        event_id=f"order_{order['id']}",
    )
    return {"order": order["id"], "event_id": event_id}


@app.post("/ping")
def ping() -> dict[str, Any]:
    order = request.get_json()
    return {"order": order["id"]}
