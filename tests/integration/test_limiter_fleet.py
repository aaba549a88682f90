"""The limiter against the sandbox's strict sliding windows: real worker processes, a backlog far
above the limit, every arrival time recorded by the server. Windows are shortened for test time
(60/2s and 100/1s); bench/limits.py measures the real ones."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.limiter import RateLimit, plan
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.services import Postgres

pytestmark = pytest.mark.slow

SERVOKI_LIMIT = "60/2s"
DATALOOK_LIMIT = "100/1s"


def peak(times: list[float], window: float) -> int:
    """Most arrivals inside one sliding window (now - window, now], as the server counts."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def arrivals(sandbox: SandboxProcess, api: str) -> list[float]:
    """Arrival times of every request the limiter let through (whatever the answer)."""
    return [r["t"] for r in sandbox.requests(api) if r["status"] != 429]


def _pump(settings: Settings, seconds: float, skew: float, ready: Any, go: Any) -> None:
    """One worker process; a non-zero ``skew`` plays another host with its wall clock off."""
    if skew:
        real = time.time
        time.time = lambda: real() + skew
        name = f"host{skew:+.0f}"
        socket.gethostname = lambda: name
    worker = Worker(settings)
    try:
        ready.set()
        go.wait(60)
        worker.pump(seconds)
    finally:
        worker.close()


class Fleet:
    """Worker processes started together on one settings object."""

    def __init__(self, settings: Settings, seconds: float, skews: tuple[float, ...]) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.go = ctx.Event()
        readies = [ctx.Event() for _ in skews]
        self.procs = [
            ctx.Process(target=_pump, args=(settings, seconds, skew, ready, self.go))
            for skew, ready in zip(skews, readies, strict=True)
        ]
        for proc in self.procs:
            proc.start()
        for ready in readies:
            assert ready.wait(60), "a worker process did not start"
        self.started = time.monotonic()
        self.go.set()

    def join(self, timeout: float) -> None:
        for proc in self.procs:
            proc.join(timeout)
            if proc.exitcode is None:
                proc.kill()
                proc.join()
            assert proc.exitcode == 0


@pytest.fixture
def fleet_settings(
    make_settings: Callable[..., Settings], postgres: Postgres, sandbox: SandboxProcess
) -> Iterator[Callable[..., Settings]]:
    sandbox.configure(servoki_limit=SERVOKI_LIMIT, datalook_limit=DATALOOK_LIMIT)

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": postgres.fresh(),
            "servoki_rate_limit": SERVOKI_LIMIT,
            "datalook_rate_limit": DATALOOK_LIMIT,
        }
        values.update(overrides)
        return make_settings(**values)

    yield make


def backlog(settings: Settings, servoki: int, datalook: int) -> None:
    enqueuer = Enqueuer(settings)
    try:
        payloads = [{"event_type": "purchase", "value": float(i)} for i in range(servoki)]
        enqueuer.push(enqueuer.encode_many("servoki", payloads)[1])
        pages = [{"event_name": "click", "page_path": f"/{i}"} for i in range(datalook)]
        enqueuer.push(enqueuer.encode_many("datalook", pages)[1])
    finally:
        enqueuer.close()


def test_four_processes_on_two_hosts_never_exceed_a_window(
    fleet_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = fleet_settings()
    backlog(settings, servoki=400, datalook=1200)
    seconds = 6.0
    # Two "hosts" with wall clocks 90 s apart; the buckets run on Redis's clock only.
    Fleet(settings, seconds, skews=(0.0, 0.0, 90.0, -90.0)).join(seconds + 30)
    stats = sandbox.stats()
    for api, text in (("servoki", SERVOKI_LIMIT), ("datalook", DATALOOK_LIMIT)):
        limit = RateLimit.parse(text)
        times = arrivals(sandbox, api)
        assert stats[api]["rate_limited"] == 0, api
        assert stats[api]["peak_window"] <= limit.limit
        assert peak(times, limit.window) <= limit.limit
        budget = plan(limit, settings.limit_jitter)
        rate = (len(times) - budget.capacity) / (max(times) - min(times))
        print(f"{api}: {len(times)} sent, {rate:.1f}/s of a {budget.rate:.1f}/s budget")
        assert rate >= 0.85 * budget.rate, api  # and it uses the budget it has


def test_a_429_pauses_the_whole_fleet_until_retry_after(
    fleet_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = fleet_settings()
    backlog(settings, servoki=0, datalook=800)
    seconds = 5.0
    fleet = Fleet(settings, seconds, skews=(0.0, 0.0, 0.0, 0.0))
    time.sleep(max(0.0, fleet.started + 1.5 - time.monotonic()))
    sandbox.set_faults(force_429=1, retry_after=2, apis=["datalook"])
    fleet.join(seconds + 30)
    log = sandbox.requests("datalook")
    assert [r["status"] for r in log].count(429) == 1
    t429 = next(r["t"] for r in log if r["status"] == 429)
    during = [r["t"] - t429 for r in log if t429 < r["t"] < t429 + 2.0]
    print(
        f"arrivals in the 2 s after the 429: {len(during)}, latest +{max(during, default=0):.3f}s"
    )
    # Only requests already on the wire when the 429 was answered (microseconds apart).
    assert all(offset < 0.05 for offset in during)
    assert len(during) <= 4 * settings.send_concurrency
    assert any(r["t"] >= t429 + 2.0 for r in log)  # and sending resumed after the pause


def test_a_backlog_on_one_destination_does_not_hold_up_another(
    fleet_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = fleet_settings(datalook_rate_limit="50/1s")
    sandbox.configure(datalook_limit="50/1s")
    backlog(settings, servoki=0, datalook=400)
    backlog(settings, servoki=10, datalook=0)  # queued behind the whole DataLook backlog
    worker = Worker(settings)
    try:
        started = time.monotonic()
        worker.pump(2.5)
    finally:
        worker.close()
    servoki = arrivals(sandbox, "servoki")
    assert len(servoki) == 10
    assert max(servoki) - started < 1.5  # at Servoki's own pace: 2 at once, then 10/s
    datalook = arrivals(sandbox, "datalook")
    assert 80 <= len(datalook) < 400 and peak(datalook, 1.0) <= 50
    assert sandbox.stats()["datalook"]["rate_limited"] == 0


def test_retries_share_the_bucket_with_fresh_events(
    fleet_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = fleet_settings(datalook_rate_limit="50/1s")
    sandbox.configure(datalook_limit="50/1s")
    sandbox.set_faults(error_rate=0.3, error_status=503, apis=["datalook"], seed=3)
    backlog(settings, servoki=0, datalook=60)
    worker = Worker(settings)
    fresh = threading.Timer(1.0, backlog, (settings, 0, 20))  # arrives among the retries
    fresh.start()
    try:
        report = worker.flush(max_wait=10)
    finally:
        fresh.join()
        worker.close()
    assert report.exit_code == 0, report
    requests = sandbox.requests("datalook")
    assert sandbox.stats()["datalook"]["accepted"] == 80
    assert any(r["status"] == 503 for r in requests)
    # Every request counts against the bucket, the 503s that the server does not count too.
    assert peak([r["t"] for r in requests], 1.0) <= 50
    assert sandbox.stats()["datalook"]["rate_limited"] == 0
