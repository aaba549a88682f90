"""Thin tasks: each calls one function of ``relay.worker``."""

from __future__ import annotations

import logging
import threading

from relay.worker import Worker
from tasks.app import app, settings

log = logging.getLogger("relay.tasks")
_worker: Worker | None = None
_lock = threading.Lock()


def worker() -> Worker:
    """This process's Worker, built on first use (after the fork)."""
    global _worker
    with _lock:
        if _worker is None:
            _worker = Worker(settings)
        return _worker


def reset_worker() -> None:
    """Forget a Worker inherited from the parent process without touching its connections."""
    global _worker
    _worker = None


def close_worker() -> None:
    global _worker
    with _lock:
        if _worker is not None:
            _worker.close()
            _worker = None


@app.task(name="relay.pump")
def pump() -> dict[str, int]:
    """Drain and deliver for up to RELAY_PUMP_SECONDS, waking at once for new events."""
    report = worker().pump(settings.pump_seconds)
    return {"delivered": report.delivered, "retried": report.retried, "dead": report.dead}


@app.task(name="relay.reap")
def reap() -> int:
    """Return batches of dead consumers to the queue."""
    return worker().queue.reap()
