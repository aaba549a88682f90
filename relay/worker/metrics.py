"""Prometheus metrics: counters written where outcomes are recorded, gauges read at scrape time.

Counters and histograms live in this module and are updated by the process that does the work
(the outbox records every drained event and every outcome; the dispatcher times limiter
waits). Under Celery's prefork pool each child is its own process, so the worker runs
prometheus-client in multiprocess mode: ``PROMETHEUS_MULTIPROC_DIR`` must be set before
prometheus-client is first imported (``tasks/app.py`` does it when ``RELAY_METRICS_PORT`` is set)
and the main process serves the sum of every child's files.

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

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from relay.settings import Settings

log = logging.getLogger("relay.metrics")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

ENQUEUED = Counter(
    "relay_events_enqueued",
    "Events accepted into the outbox (new rows; duplicates are counted apart).",
    ["destination"],
)
DEDUPLICATED = Counter(
    "relay_events_deduplicated",
    "Events dropped because the outbox already held their (destination, event_id).",
    ["destination"],
)
DELIVERED = Counter("relay_events_delivered", "Events the API accepted.", ["destination"])
DEAD = Counter("relay_events_dead", "Events that ended dead.", ["destination"])
RETRIED = Counter(
    "relay_events_retried", "Attempts that failed and were scheduled again.", ["destination"]
)
THROTTLED = Counter("relay_responses_429", "429 Too Many Requests responses.", ["destination"])
PAUSED = Counter(
    "relay_key_refusals", "401/403 responses that paused a destination.", ["destination"]
)
LATENCY = Histogram(
    "relay_delivery_latency_seconds",
    "From enqueue to the API accepting the event.",
    ["destination"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600),
)
LIMITER_WAIT = Histogram(
    "relay_limiter_wait_seconds",
    "Time a claimed event waited for its rate-limit slot.",
    ["destination"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def drained(destination: str, new: int, duplicates: int) -> None:
    """Count events moved into the outbox for ``destination``."""
    if new:
        ENQUEUED.labels(destination).inc(new)
    if duplicates:
        DEDUPLICATED.labels(destination).inc(duplicates)


def outcome(verdict: str, destination: str, status: int | None, latency: float | None) -> None:
    """Count one recorded outcome (``delivered``, ``dead``, ``retry`` or ``pause``)."""
    if verdict == "delivered":
        DELIVERED.labels(destination).inc()
        if latency is not None:
            LATENCY.labels(destination).observe(max(0.0, latency))
    elif verdict == "dead":
        DEAD.labels(destination).inc()
    elif verdict == "retry":
        RETRIED.labels(destination).inc()
    elif verdict == "pause":
        PAUSED.labels(destination).inc()
    if status == 429:
        THROTTLED.labels(destination).inc()


def limiter_waited(destination: str, seconds: float) -> None:
    LIMITER_WAIT.labels(destination).observe(max(0.0, seconds))


# -- serving ----------------------------------------------------------------------------


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
        from prometheus_client import multiprocess

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
        from relay.ops.admin import Admin

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

    def _redis_gauges(self, admin: Any, up: GaugeMetricFamily) -> Iterator[Any]:
        from relay.errors import RelayError

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

    def _outbox_gauges(self, admin: Any, up: GaugeMetricFamily) -> Iterator[Any]:
        from relay.errors import RelayError

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
        empty = {"pending": 0, "dead": 0, "oldest_pending_age": None}
        for name in sorted(set(admin.destinations) | set(backlog)):
            row = backlog.get(name, empty)
            pending.add_metric([name], row["pending"])
            dead.add_metric([name], row["dead"])
            if row["oldest_pending_age"] is not None:
                oldest.add_metric([name], row["oldest_pending_age"])
        yield pending
        yield dead
        yield oldest
