"""A small FastAPI shop that reports each captured payment to Servoki through the relay.

    RELAY_SERVOKI_API_KEY=... RELAY_SERVOKI_SITE=shop.example \\
        .venv/bin/uvicorn --workers 2 examples.fastapi_app:app
    .venv/bin/celery -A tasks worker -B                           # delivers the events

``/pay`` enqueues one event per request; ``/ping`` does the same work without it (the
baseline for the per-request overhead).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

import relay
from relay.contrib.fastapi import Events, events, lifespan

app = FastAPI(lifespan=lifespan)


@app.exception_handler(relay.InvalidEvent)
async def invalid_event(request: Request, exc: relay.InvalidEvent) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=400)  # nothing was written


class Order(BaseModel):
    id: str
    value: float
    currency: str


@app.post("/pay")
async def pay(order: Order, relay_events: Annotated[Events, Depends(events)]) -> dict[str, Any]:
    event_id = await relay_events.enqueue(
        "servoki",
        {"event_type": "purchase", "value": order.value, "currency": order.currency},
        event_id=f"order_{order.id}",
    )
    return {"order": order.id, "event_id": event_id}


@app.post("/ping")
async def ping(order: Order) -> dict[str, Any]:
    return {"order": order.id}
