"""The Celery app, its beat schedule, and the hooks of the worker's main process.

The tasks are in :mod:`tasks.jobs` (``include``d: the worker and beat load it at start); they
are ``shared_task``s, so neither module imports the other. Settings come from
:mod:`tasks.environment`, read once at this entry point.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.concurrency import ALIASES, get_implementation  # type: ignore[attr-defined]
from celery.signals import worker_init, worker_process_init, worker_shutdown

from relay.ops import exporter
from relay.settings import Settings
from relay.worker.full_redis import FullRedisWatch
from tasks.environment import settings


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
_full_redis: FullRedisWatch | None = None


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


# Connected first, so it runs before anything else starts (receivers run in this order; the
# jobs' own receivers connect later, when the worker loads tasks.jobs).
@worker_init.connect
def _refuse_green_pools(sender: Any = None, **_: Any) -> None:
    refuse_green_pool(sender.pool_cls)


@worker_init.connect
def _watch_for_a_full_redis(**_: Any) -> None:
    # On a full Redis beat cannot publish wake-ups and Celery's consumer dies at start (kombu
    # takes a lock with SET NX): drain first, then keep watching from this main process.
    global _full_redis
    _full_redis = FullRedisWatch(settings)
    _full_redis.relieve()
    _full_redis.start()


@worker_shutdown.connect
def _stop_watching(**_: Any) -> None:
    if _full_redis is not None:
        _full_redis.stop()


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    # The main process outlives every pool child: it serves the children's metrics.
    global _metrics_server
    if settings.metrics_port is not None:
        exporter.clear_multiprocess_dir()
        _metrics_server = exporter.serve(settings)


@worker_process_init.connect
def _close_metrics_socket(**_: Any) -> None:
    # A forked child must not keep the parent's listening socket (see exporter.serve).
    exporter.close_in_child(_metrics_server)
