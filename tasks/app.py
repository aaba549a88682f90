"""Celery app, settings and beat schedule; settings are read once, here, at the entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.concurrency import ALIASES, get_implementation
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from relay.queue import embedded
from relay.settings import Settings, load_settings

settings: Settings = load_settings()
settings.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # beat's schedule lives there
if settings.embedded_redis:
    embedded.ensure_running(settings.home)
if settings.metrics_port is not None:
    # prometheus-client picks its value store when it is first imported, which happens below
    # (tasks.jobs → relay.outbox → relay.metrics): every pool child then writes its own file
    # here and the main process serves their sum.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str((settings.home / "metrics").resolve()))
    Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)


def broker_url(settings: Settings) -> str:
    """Celery's broker: the relay's own Redis (kombu spells unix sockets redis+socket://)."""
    url = settings.resolved_redis_url
    if url.startswith("unix://"):
        return "redis+socket://" + url.removeprefix("unix://")
    return url


app = Celery("relay", broker=broker_url(settings), include=["tasks.jobs"])
app.conf.update(
    # A message is acknowledged after its task ran, and one process holds one message.
    task_acks_late=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=f"{settings.namespace}.wakeups",
    broker_connection_retry_on_startup=True,
    # Wake-ups carry no state and beat sends one a second, so the broker keeps no record of
    # unacknowledged ones: kombu's ack emulation acknowledges with MULTI, which a full Redis
    # refuses, and that stops the worker for good ("Unrecoverable error"). A wake-up lost with
    # a killed worker is replaced within a second.
    broker_transport_options={"ack_emulation": False},
    worker_hijack_root_logger=False,
    # No ETA/countdown tasks anywhere: retry times live in the outbox, not in the broker.
    beat_schedule={
        "pump": {
            "task": "relay.pump",
            "schedule": 1.0,
            # Wake-ups that waited longer than this are stale; a newer one is behind them.
            "options": {"expires": 5.0},
        },
        "reap": {"task": "relay.reap", "schedule": 30.0, "options": {"expires": 30.0}},
        # Delivered and discarded rows older than RELAY_RETENTION_SECONDS, in batches.
        "prune": {"task": "relay.prune", "schedule": 3600.0, "options": {"expires": 600.0}},
    },
    beat_schedule_filename=str(settings.home / "celerybeat-schedule"),
    timezone="UTC",
)


_metrics_server: Any = None
_full_redis: Any = None


def refuse_green_pool(pool: Any) -> None:
    """Stop the worker's start under a green pool (gevent, eventlet), saying what to use.

    The relay keeps one Worker (queue consumer, connections, HTTP thread pool) per thread;
    greenlets of one thread would share it, and a Worker per greenlet would be built for every
    task (those pools spawn a greenlet per task). Nothing would be gained: a pump is one serial
    loop, and its concurrency is RELAY_SEND_CONCURRENCY requests in flight, in real threads.
    """
    implementation = get_implementation(pool)
    if getattr(implementation, "is_green", False):
        path = f"{implementation.__module__}:{implementation.__qualname__}"
        name = next((alias for alias, target in ALIASES.items() if target == path), path)
        raise SystemExit(
            f"relay: the Celery pool {name} runs tasks as greenlets, which the relay does "
            "not support: use -P prefork (the default, one process per pump) or -P threads "
            "(one thread per pump), or -P solo for a single pump; RELAY_SEND_CONCURRENCY sets "
            "the requests each pump keeps in flight"
        )


# Connected first, so it runs before anything else starts (receivers run in this order).
@worker_init.connect
def _refuse_green_pools(sender: Any = None, **_: Any) -> None:
    refuse_green_pool(sender.pool_cls)


@worker_init.connect
def _remember_main_process(**_: Any) -> None:
    # A SIGTERM that ends a pump's round in this process is Celery's too (-P solo).
    from tasks import jobs

    jobs.worker_started()


@worker_init.connect
def _watch_for_a_full_redis(**_: Any) -> None:
    # On a full Redis beat cannot publish wake-ups and Celery's consumer dies at start (kombu
    # takes a lock with SET NX): drain first, then keep watching from this main process.
    # Imported here, not at the top: relay.worker loads prometheus-client, which must not be
    # imported before PROMETHEUS_MULTIPROC_DIR is set above.
    from relay.worker.full_redis import FullRedisWatch

    global _full_redis
    _full_redis = FullRedisWatch(settings)
    _full_redis.relieve()
    _full_redis.start()


@worker_shutdown.connect
def _stop_watching(**_: Any) -> None:
    if _full_redis is not None:
        _full_redis.stop()


@worker_shutting_down.connect
def _end_rounds(**_: Any) -> None:
    # -P threads: a SIGTERM (or Ctrl-C) to the process ends each running pump after its current
    # round, as a process-group SIGTERM does in prefork children (sigterm_ends_round); the warm
    # shutdown then waits for a round, not for the rest of every pump.
    from tasks import jobs

    jobs.stop_workers()


@worker_shutdown.connect
def _close_workers(**_: Any) -> None:
    # -P threads and -P solo run tasks in this process (the pool has stopped by now); under
    # prefork each child closes its own in worker_process_shutdown and this finds none.
    from tasks import jobs

    jobs.close_workers()


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # The main process outlives every pool child: it serves the children's metrics.
    global _metrics_server
    if settings.metrics_port is not None:
        from relay.ops import exporter as metrics

        metrics.clear_multiprocess_dir()
        _metrics_server = metrics.serve(settings)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections made before the fork belong to the parent: each child builds its own.
    from tasks import jobs

    jobs.reset_workers()
    if _metrics_server is not None:
        from relay.ops import exporter as metrics

        metrics.close_in_child(_metrics_server)


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    from tasks import jobs

    jobs.close_workers()
