"""Prometheus counters and histograms, updated by the worker process that does the work.

A leaf: the worker counts what the outbox reports (events drained in, outcomes recorded) and
times limiter waits; nothing here reads Redis or the outbox. Under Celery's prefork pool each
child is its own process, so the worker runs prometheus-client in multiprocess mode:
``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus-client is first imported
(``tasks/environment.py`` does it when ``RELAY_METRICS_PORT`` is set). Serving them, with the
gauges read at scrape time, is the operator tools' job: :mod:`relay.ops.exporter`.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
    """Time one claimed event waited for its rate-limit slot."""
    LIMITER_WAIT.labels(destination).observe(max(0.0, seconds))
