"""Put events on the queue and read the outbox back, for tests that drive a real worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.schema import outbox
from relay.settings import Settings
from relay.worker.loop import FlushReport, Worker


def enqueue(settings: Settings, destination: str, payloads: list[dict[str, Any]]) -> list[str]:
    """Encode ``payloads`` and push them in one write; return their event ids."""
    enqueuer = Enqueuer(settings)
    try:
        ids, items = enqueuer.encode_many(destination, payloads)
        enqueuer.push(items)
    finally:
        enqueuer.close()
    return ids


def purchases(n: int) -> list[dict[str, Any]]:
    """``n`` valid Servoki purchases, each with its own value."""
    return [{"event_type": "purchase", "value": float(i)} for i in range(n)]


def rows(worker: Worker) -> dict[str, Any]:
    """The worker's outbox rows by event id."""
    with worker.engine.connect() as conn:
        return {row.event_id: row for row in conn.execute(select(outbox))}


def flush(settings: Settings, max_wait: float = 5) -> FlushReport:
    """``relay flush`` in this process: drain and deliver until nothing is due."""
    worker = Worker(settings)
    try:
        return worker.flush(max_wait=max_wait)
    finally:
        worker.close()


def delivered_ids(sandbox: SandboxProcess) -> list[str]:
    """The event ids Servoki's sandbox accepted, sorted."""
    return sorted(e["body"]["event_id"] for e in sandbox.events("servoki"))
