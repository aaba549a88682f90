"""Thin tasks: each calls one function of ``relay.worker``."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

from relay import outbox_admin
from relay.admin import forget_stale_workers
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


@contextlib.contextmanager
def sigterm_ends_round(current: Worker) -> Iterator[None]:
    """While a pump runs, SIGTERM makes it stop after its current round instead of killing it.

    A SIGTERM to the whole process group (honcho, foreman, Heroku, ``kill -TERM -PGID``) also
    reaches the pool children, whose default is to die mid-delivery. The main process is
    shutting down warm at the same time: it waits for this pump, which now returns within a
    round, and then closes the pool.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopped = threading.Event()

    def stop(signum: int, frame: Any) -> None:
        stopped.set()
        current.stopping.set()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stopped.is_set():
            # The next pump (if the main process did not stop after all) runs normally.
            current.stopping.clear()


@app.task(name="relay.pump")
def pump() -> dict[str, int]:
    """Drain and deliver for up to RELAY_PUMP_SECONDS, waking at once for new events."""
    current = worker()
    with sigterm_ends_round(current):
        report = current.pump(settings.pump_seconds)
    return {"delivered": report.delivered, "retried": report.retried, "dead": report.dead}


@app.task(name="relay.reap")
def reap() -> int:
    """Return batches of dead consumers to the queue."""
    return worker().queue.reap()


@app.task(name="relay.prune")
def prune() -> int:
    """Delete delivered and discarded rows older than RELAY_RETENTION_SECONDS, in batches."""
    current = worker()
    deleted = outbox_admin.prune(current.engine, settings.retention_seconds)
    # Heartbeats of killed workers are never removed by their owners; a day is plenty.
    forget_stale_workers(current.redis, current.keys, 86400.0)
    if deleted:
        log.info("pruned %d delivered/discarded outbox rows", deleted)
    return deleted
