"""Thin tasks: each calls one function of ``relay.worker``.

Every thread that runs tasks has its own ``Worker``: its own queue consumer (processing list),
connections and HTTP pool, as if it were a process of its own. Under ``-P threads`` pumps run
side by side in one process, and one consumer shared between them loses events: one thread's
ack drops the processing list while another thread's batch is still in it, not yet in the
outbox. Green pools (gevent, eventlet) are refused at start (see ``tasks.app``).

The tasks are ``shared_task``s: the app (:mod:`tasks.app`) loads this module by name
(``include``) and this module does not import the app. The Workers' lifecycle follows the
Celery worker's signals, connected here.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from celery import shared_task
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from relay.ops.admin import forget_stale_workers
from relay.outbox import queries as outbox_admin
from relay.worker.loop import Worker
from tasks.environment import settings

log = logging.getLogger("relay.tasks")
_workers: dict[int, Worker] = {}  # thread ident → that thread's Worker
_lock = threading.Lock()
_main_pid: int | None = None  # the Celery worker's main process, once it starts


def worker() -> Worker:
    """This thread's Worker, built on first use (after the fork, in the thread that uses it)."""
    thread = threading.get_ident()
    current = _workers.get(thread)
    if current is None:
        # One at a time: the first Workers of a new SQLite outbox would migrate it together.
        with _lock:
            current = _workers[thread] = Worker(settings)
    return current


def reset_workers() -> None:
    """Forget Workers inherited from the parent process without touching their connections."""
    global _lock
    _workers.clear()
    _lock = threading.Lock()  # another thread of the parent may have held it at the fork


def worker_started() -> None:
    """Celery's worker is starting in this process, its main one (before any pool child)."""
    global _main_pid
    _main_pid = os.getpid()


def stop_workers() -> None:
    """Make every running pump stop after its current round: the worker is shutting down.

    Celery calls this from its signal handler in the main thread. Under ``-P threads`` the
    pumps run in other threads, so the handler never interrupts a wait on their ``stopping``;
    under ``-P solo`` the pump runs in the main thread with ``sigterm_ends_round``'s handler
    instead, and Celery's runs only between pumps.
    """
    for current in list(_workers.values()):
        current.stopping.set()


def close_workers() -> None:
    """Close every Worker of this process; at its exit, once its pumps have returned."""
    with _lock:
        closing = list(_workers.values())
        _workers.clear()
    for current in closing:
        try:
            current.close()
        except Exception as exc:  # one failed close must not keep the others open
            log.warning("could not close a worker: %s: %s", type(exc).__name__, exc)


@contextlib.contextmanager
def sigterm_ends_round(current: Worker) -> Iterator[None]:
    """While a pump runs, SIGTERM makes it stop after its current round instead of killing it.

    A SIGTERM to the whole process group (honcho, foreman, Heroku, ``kill -TERM -PGID``) also
    reaches the pool children, whose default is to die mid-delivery. The main process is
    shutting down warm at the same time: it waits for this pump, which now returns within a
    round, and then closes the pool. Under ``-P solo`` the pump runs in Celery's main process:
    the SIGTERM is raised again once the pump has returned, for Celery's own handler, so the
    worker shuts down warm instead of only ending one pump. Under ``-P threads`` pumps run in
    other threads, where signals never arrive: ``stop_workers`` ends their rounds.
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
            if os.getpid() == _main_pid:
                # -P solo: Celery's handler never saw this SIGTERM, and the worker would go on.
                signal.raise_signal(signal.SIGTERM)


# -- the Celery worker's signals ---------------------------------------------------------


@worker_init.connect
def _remember_main_process(**_: Any) -> None:
    # A SIGTERM that ends a pump's round in this process is Celery's too (-P solo).
    worker_started()


@worker_shutting_down.connect
def _end_rounds(**_: Any) -> None:
    # -P threads: a SIGTERM (or Ctrl-C) to the process ends each running pump after its current
    # round, as a process-group SIGTERM does in prefork children (sigterm_ends_round); the warm
    # shutdown then waits for a round, not for the rest of every pump.
    stop_workers()


@worker_shutdown.connect
def _close_workers(**_: Any) -> None:
    # -P threads and -P solo run tasks in this process (the pool has stopped by now); under
    # prefork each child closes its own in worker_process_shutdown and this finds none.
    close_workers()


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections made before the fork belong to the parent: each child builds its own.
    reset_workers()


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    close_workers()


# -- the tasks ----------------------------------------------------------------------------


@shared_task(name="relay.pump")
def pump() -> dict[str, int]:
    """Drain and deliver for up to RELAY_PUMP_SECONDS, waking at once for new events."""
    current = worker()
    with sigterm_ends_round(current):
        report = current.pump(settings.pump_seconds)
    return {"delivered": report.delivered, "retried": report.retried, "dead": report.dead}


@shared_task(name="relay.reap")
def reap() -> int:
    """Return batches of dead consumers to the queue."""
    return worker().queue.reap()


@shared_task(name="relay.prune")
def prune() -> int:
    """Delete delivered and discarded rows older than RELAY_RETENTION_SECONDS, in batches."""
    current = worker()
    deleted = outbox_admin.prune(current.engine, settings.retention_seconds)
    # Heartbeats of killed workers are never removed by their owners; a day is plenty.
    forget_stale_workers(current.redis, current.keys, 86400.0)
    if deleted:
        log.info("pruned %d delivered/discarded outbox rows", deleted)
    return deleted
