"""Celery app, settings and beat schedule; settings are read once, here, at the entry point."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from relay import embedded
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


@worker_init.connect
def _watch_for_a_full_redis(**_: Any) -> None:
    # On a full Redis beat cannot publish wake-ups and Celery's consumer dies at start (kombu
    # takes a lock with SET NX): drain first, then keep watching from this main process.
    # Imported here, not at the top: relay.worker loads prometheus-client, which must not be
    # imported before PROMETHEUS_MULTIPROC_DIR is set above.
    from relay.full_redis import FullRedisWatch

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
        from relay import metrics

        metrics.clear_multiprocess_dir()
        _metrics_server = metrics.serve(settings)


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # Connections made before the fork belong to the parent: each child builds its own.
    from tasks import jobs

    jobs.reset_worker()
    if _metrics_server is not None:
        from relay import metrics

        metrics.close_in_child(_metrics_server)


@worker_process_shutdown.connect
def _on_child_exit(**_: Any) -> None:
    from tasks import jobs

    jobs.close_worker()
