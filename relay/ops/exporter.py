"""The Prometheus exporter: the worker's counters plus gauges read at scrape time, over HTTP.

The counters and histograms are the worker's (:mod:`relay.worker.metrics`). Under Celery's
prefork pool each child is its own process and writes its own files in
``PROMETHEUS_MULTIPROC_DIR`` (set before prometheus-client is first imported:
``tasks/environment.py``); the main process serves the sum of every child's files.

Gauges (queue length, backlog, pauses, heartbeats) are not kept by anyone: :class:`StateCollector`
reads them from Redis and the outbox on each scrape, with connections it closes again, so the
serving process holds no connection across the pool's forks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, multiprocess, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.errors import RelayError
from relay.ops.admin import Admin
from relay.outbox.queries import Backlog
from relay.settings import Settings

log = logging.getLogger("relay.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def clear_multiprocess_dir() -> None:
    """Forget the files of a previous run (counters restart at zero, as Prometheus expects)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    for path in Path(directory).glob("*.db"):
        path.unlink(missing_ok=True)


def build_registry(settings: Settings) -> CollectorRegistry:
    """Everything one scrape returns: every process's counters plus the state gauges."""
    registry = CollectorRegistry()
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry.register(_ThisProcess())
    registry.register(StateCollector(settings))
    return registry


class _ThisProcess(Collector):
    """This process's own metrics (when not in multiprocess mode)."""

    def collect(self) -> Iterator[Any]:
        yield from REGISTRY.collect()


def serve(settings: Settings) -> Any:
    """Serve /metrics on ``settings.metrics_port`` in a daemon thread; return the server.

    Call it in the process that outlives the pool (Celery's main process); forked children
    must close their copy of its socket (:func:`close_in_child`), or a child orphaned by a
    ``kill -9`` of the main process keeps the port and the restarted worker cannot bind it.
    """
    assert settings.metrics_port is not None
    try:
        server, _thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_addr, registry=build_registry(settings)
        )
    except OSError as exc:
        log.error(
            "cannot serve metrics on %s:%d (%s); the worker runs without them",
            settings.metrics_addr,
            settings.metrics_port,
            exc,
        )
        return None
    log.info(
        "serving Prometheus metrics on %s:%d/metrics", settings.metrics_addr, server.server_port
    )
    return server


def close_in_child(server: Any) -> None:
    """In a forked child: drop the inherited listening socket (the parent keeps serving)."""
    if server is not None:
        server.socket.close()


class StateCollector(Collector):
    """Gauges read from Redis and the outbox at each scrape."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily(
            "relay_state_up", "Whether Redis and the outbox answered this scrape.", labels=["part"]
        )
        # A fresh connection per scrape, closed again: nothing is held across the pool's forks.
        admin = Admin(self.settings, start_embedded=False, check_schema=False)
        try:
            yield from self._redis_gauges(admin, up)
            yield from self._outbox_gauges(admin, up)
        finally:
            admin.close()
        yield up

    def _redis_gauges(self, admin: Admin, up: GaugeMetricFamily) -> Iterator[Any]:
        try:
            queue = admin.queue_length()
            quarantine = admin.quarantine_length()
            paused = admin.pauses()
            beats = admin.heartbeats()
        except RelayError as exc:
            log.warning("metrics: %s", exc)
            up.add_metric(["redis"], 0)
            return
        up.add_metric(["redis"], 1)
        yield GaugeMetricFamily("relay_queue_length", "Events waiting in Redis.", value=queue)
        yield GaugeMetricFamily(
            "relay_quarantine_length", "Unparseable queue items kept aside.", value=quarantine
        )
        gauge = GaugeMetricFamily(
            "relay_destination_paused", "1 while a destination is paused.", labels=["destination"]
        )
        for name in sorted(set(admin.destinations) | set(paused)):
            gauge.add_metric([name], 1 if name in paused else 0)
        yield gauge
        if beats:
            yield GaugeMetricFamily(
                "relay_worker_heartbeat_age_seconds",
                "Seconds since the most recent worker heartbeat.",
                value=max(0.0, admin.now_ts() - max(beats.values())),
            )

    def _outbox_gauges(self, admin: Admin, up: GaugeMetricFamily) -> Iterator[Any]:
        try:
            backlog = admin.backlog()
        except RelayError as exc:
            log.warning("metrics: %s", exc)
            up.add_metric(["database"], 0)
            return
        up.add_metric(["database"], 1)
        pending = GaugeMetricFamily("relay_backlog", "Pending outbox rows.", labels=["destination"])
        dead = GaugeMetricFamily("relay_dead_rows", "Dead outbox rows.", labels=["destination"])
        oldest = GaugeMetricFamily(
            "relay_oldest_pending_seconds",
            "Age of the oldest pending event (since enqueue).",
            labels=["destination"],
        )
        for name in sorted(set(admin.destinations) | set(backlog)):
            row = backlog.get(name, Backlog())
            pending.add_metric([name], row.pending)
            dead.add_metric([name], row.dead)
            if row.oldest_pending_age is not None:
                oldest.add_metric([name], row.oldest_pending_age)
        yield pending
        yield dead
        yield oldest
