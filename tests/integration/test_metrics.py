"""Prometheus metrics: counters from real deliveries, gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.ops import exporter
from relay.settings import Settings
from relay.worker.loop import Worker

COUNTERS = (
    "relay_events_enqueued_total", "relay_events_deduplicated_total",
    "relay_events_delivered_total", "relay_events_dead_total", "relay_events_retried_total",
    "relay_responses_429_total", "relay_delivery_latency_seconds_count",
    "relay_limiter_wait_seconds_count",
)  # fmt: skip


def sample(name: str, destination: str) -> float:
    return REGISTRY.get_sample_value(name, {"destination": destination}) or 0.0


def test_counters_follow_real_deliveries(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings()
    before = {name: sample(name, "servoki") for name in COUNTERS}
    enqueuer = Enqueuer(settings)
    ok = [enqueuer.encode("servoki", {"event_type": "purchase"}, f"m-{i}")[1] for i in range(3)]
    lost = enqueuer.encode("servoki", {"event_type": "purchase", "site": "nowhere.example"})[1]
    enqueuer.push([*ok, ok[0], lost])  # one duplicate
    enqueuer.close()
    sandbox.set_faults(force_429=1, apis=["servoki"])
    worker = Worker(settings)
    try:
        assert worker.flush(max_wait=5).exit_code == 1
    finally:
        worker.close()
    delta = {name: sample(name, "servoki") - before[name] for name in COUNTERS}
    assert delta == {
        "relay_events_enqueued_total": 4,
        "relay_events_deduplicated_total": 1,
        "relay_events_delivered_total": 3,
        "relay_events_dead_total": 1,
        "relay_events_retried_total": 1,
        "relay_responses_429_total": 1,
        "relay_delivery_latency_seconds_count": 3,
        "relay_limiter_wait_seconds_count": 5,  # one per request sent
    }


def test_scrape_reads_queue_backlog_and_pauses(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings()
    worker = Worker(settings)  # creates the outbox
    worker.pauses.pause("datalook", "testing", by="operator")
    worker.close()
    enqueuer = Enqueuer(settings)
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "signup"})[1] for _ in range(2)])
    enqueuer.close()
    text = generate_latest(exporter.build_registry(settings)).decode()
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert values[("relay_queue_length", ())] == 2
    assert values[("relay_backlog", (("destination", "servoki"),))] == 0
    assert values[("relay_destination_paused", (("destination", "datalook"),))] == 1
    assert values[("relay_destination_paused", (("destination", "servoki"),))] == 0
    assert values[("relay_state_up", (("part", "redis"),))] == 1
    assert values[("relay_state_up", (("part", "database"),))] == 1
    assert "# TYPE relay_events_delivered_total counter" in text  # this process's counters
