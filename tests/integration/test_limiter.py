"""The shared buckets on real Redis: the Lua scripts under concurrency from threads and
processes, Redis's clock, refunds, 429 pauses, missed slots, and failing closed. (Budget maths and
scope configuration, without Redis: tests/unit/test_budget.py.)"""

from __future__ import annotations

import logging
import multiprocessing
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import LimiterUnavailable
from relay.keys import Keys
from relay.limiter import RateLimit, RedisLimiter, budgets_for, plan
from relay.limiter.base import Grant
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.limits import SCOPE, make_limiter
from tests.support.pipeline import enqueue, purchases, rows
from tests.support.services import RedisServer


@pytest.fixture
def namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def redis_now_us(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


def assert_gcra_bound(slots: list[int], interval_us: int, tau_us: int) -> None:
    """No k slots closer together than (k - 1)·T - tau: at most C + Δ/T in any interval Δ."""
    slots = sorted(slots)
    best = -(10**30)  # max over i < j of slots[i] - i·T
    for j, slot in enumerate(slots):
        if j:
            assert slot - j * interval_us + tau_us >= best, f"slot {j} over the bound"
        best = max(best, slot - j * interval_us)


# -- the Lua scripts ---------------------------------------------------------------------------


def test_slots_are_timed_by_redis_not_by_the_client(
    redis_client: redis.Redis, namespace: str
) -> None:
    # A client whose clock is a day off: it never sends its time, it only waits relative to it.
    skewed = make_limiter(redis_client, namespace, "10/1s", clock=lambda: time.monotonic() + 86_400)
    before = redis_now_us(redis_client)
    grant = skewed.reserve(SCOPE, 3, 1.0)
    after = redis_now_us(redis_client)
    first, second, third = grant.tickets
    assert before <= first.issued <= after and first.due == first.issued
    budget = skewed.budgets["s"]
    assert second.due - first.due == third.due - second.due == budget.interval_us
    assert abs(first.at - skewed.clock()) < 0.05
    assert abs((third.at - first.at) - 2 * budget.interval_us / 1e6) < 1e-6


def _hammer(redis_url: str, namespace: str, seconds: float, skew: float, go: Any, out: Any) -> None:
    """Reserve and refund from four threads; report the slots kept (Redis µs)."""
    if skew:
        real = time.time
        time.time = lambda: real() + skew  # a host whose wall clock is off
    client = redis.Redis.from_url(redis_url)
    limiter = make_limiter(client, namespace, "300/1s", clock=lambda: time.monotonic() + skew)
    kept: list[int] = []
    lock = threading.Lock()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            grant = limiter.reserve(SCOPE, rng.randint(1, 6), 0.2)
            if not grant.tickets:
                time.sleep(0.01)
                continue
            keep = rng.randint(0, len(grant.tickets))
            limiter.refund(grant, len(grant.tickets) - keep)
            with lock:
                kept.extend(ticket.due for ticket in grant.tickets[:keep])

    go.wait(30)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    client.close()
    out.put(kept)


def test_concurrent_threads_and_processes_never_beat_the_bound(
    redis_url: str, namespace: str
) -> None:
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    seconds = 1.5
    procs = [
        ctx.Process(target=_hammer, args=(redis_url, namespace, seconds, skew, go, out))
        for skew in (0.0, 3600.0, -7200.0)
    ]
    for proc in procs:
        proc.start()
    here = threading.Thread(target=_hammer, args=(redis_url, namespace, seconds, 0.0, go, out))
    here.start()
    time.sleep(1.0)  # let the children import
    go.set()
    slots = [slot for _ in range(len(procs) + 1) for slot in out.get(timeout=60)]
    here.join()
    for proc in procs:
        proc.join(30)
        assert proc.exitcode == 0
    budget = plan(RateLimit.parse("300/1s"), 0.0)
    assert_gcra_bound(slots, budget.interval_us, budget.tau_us)
    span = (max(slots) - min(slots)) / 1e6
    # The bound is tight: the busiest stretch really is paced at the bucket's rate.
    assert len(slots) >= 0.5 * budget.rate * span
    assert len(slots) <= budget.capacity + budget.rate * span + 1


def test_refund_gives_back_only_what_nobody_reserved_after(
    redis_client: redis.Redis, namespace: str
) -> None:
    one = make_limiter(redis_client, namespace, "10/1s")  # capacity 1, one slot per 125 ms
    other = make_limiter(
        redis.Redis(connection_pool=redis_client.connection_pool), namespace, "10/1s"
    )
    first = one.reserve(SCOPE, 5, 10.0)
    one.refund(first, 3)
    assert one.stats.refunded == 3
    assert other.reserve(SCOPE, 1, 10.0).tickets[0].due == first.tickets[2].due
    mine = one.reserve(SCOPE, 3, 10.0)
    theirs = other.reserve(SCOPE, 1, 10.0)
    one.refund(mine, 2)  # someone reserved since: the slots stay spent
    assert one.stats.refunded == 3
    interval = one.budgets["s"].interval_us
    assert other.reserve(SCOPE, 1, 10.0).tickets[0].due == theirs.tickets[0].due + interval


def test_429_pauses_every_client_cuts_the_rate_and_recovers(
    redis_client: redis.Redis, namespace: str
) -> None:
    a = make_limiter(redis_client, namespace, "10/1s", recovery_seconds=0.5)
    b = make_limiter(
        redis.Redis(connection_pool=redis_client.connection_pool),
        namespace,
        "10/1s",
        recovery_seconds=0.5,
    )
    interval = a.budgets["s"].interval_us
    early = a.reserve(SCOPE, 1, 1.0).tickets[0]
    assert 0.55 < b.throttle(SCOPE, 0.6) <= 0.6
    # A slot granted before the 429 does not go out, on any worker.
    clearance = a.wait(early)
    assert not clearance.go and 0.5 < clearance.paused_for <= 0.6
    grant = a.reserve(SCOPE, 3, 5.0)
    first, second, third = (t.due for t in grant.tickets)
    assert first - grant.tickets[0].issued >= 0.55e6
    assert second - first == third - second == 2 * interval  # half the rate
    b.throttle(SCOPE, 0.6)  # in flight during the same pause: no second cut
    assert float(redis_client.hget(Keys(namespace).limiter("s"), "factor") or 0) == 0.5
    time.sleep((third - redis_now_us(redis_client)) / 1e6 + 0.5)
    later = a.reserve(SCOPE, 3, 5.0).tickets
    assert later[2].due - later[1].due == interval  # recovered to the full rate


def test_one_check_serves_the_sends_of_the_next_moments(
    redis_client: redis.Redis, namespace: str
) -> None:
    # A late margin of 0.5 s: the slots stay good through the test's sleeps.
    a = make_limiter(redis_client, namespace, "1000/1s", jitter=1.0, check_reuse=0.2)
    other = redis.Redis(connection_pool=redis_client.connection_pool)
    b = make_limiter(other, namespace, "1000/1s", jitter=1.0)
    tickets = a.reserve(SCOPE, 3, 1.0).tickets
    started = time.monotonic()
    assert a.wait(tickets[0]).go and a.wait(tickets[1]).go
    assert a.stats.checks == 1 or time.monotonic() - started > 0.2  # one round trip for both
    b.throttle(SCOPE, 0.5)
    # Another process's 429 is seen by the next check, at most check_reuse later ...
    time.sleep(0.21)
    clearance = a.wait(tickets[2])
    assert not clearance.go and 0.2 < clearance.paused_for <= 0.3
    # ... and this process's own 429 at once, whatever it checked a moment ago.
    time.sleep(clearance.paused_for + 0.01)
    fresh = a.reserve(SCOPE, 1, 1.0).tickets
    assert fresh and a.wait(fresh[0]).go
    a.throttle(SCOPE, 0.5)
    assert not a.wait(fresh[0]).go


def test_retry_after_is_capped(redis_client: redis.Redis, namespace: str) -> None:
    limiter = make_limiter(redis_client, namespace, "10/1s", pause_cap=2.0)
    assert 1.9 < limiter.throttle(SCOPE, 10**9) <= 2.0


def test_a_missed_slot_is_reserved_again(redis_client: redis.Redis, namespace: str) -> None:
    # A thread that wakes 200 ms late would land outside the jitter margin: it takes a new slot.
    late = make_limiter(
        redis_client, namespace, "10/1s", jitter=0.1, sleep=lambda s: time.sleep(s + 0.2)
    )
    ticket = late.reserve(SCOPE, 2, 1.0).tickets[1]
    clearance = late.wait(ticket)
    assert clearance.go and clearance.slot != ticket.at
    assert late.stats.missed == 1


def test_redis_down_fails_closed_and_recovers(
    tmp_path: Path, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path).start()
    client = redis.Redis.from_url(server.url)
    limiter = make_limiter(client, namespace, "10/1s")
    try:
        ticket = limiter.reserve(SCOPE, 1, 1.0).tickets[0]
        server.stop()
        with caplog.at_level(logging.WARNING, "relay.limits"):
            for _ in range(3):
                with pytest.raises(LimiterUnavailable, match="nothing was sent"):
                    limiter.reserve(SCOPE, 1, 1.0)
            with pytest.raises(LimiterUnavailable):
                limiter.wait(ticket)
            assert caplog.text.count("rate limiter unavailable") == 1  # once per outage
            server.start()
            assert limiter.reserve(SCOPE, 1, 1.0).tickets
            assert "rate limiter reachable again" in caplog.text
    finally:
        client.close()
        server.stop()


def test_worker_sends_nothing_unmetered_while_the_limiter_is_down(
    make_settings: Callable[..., Settings],
    sandbox: SandboxProcess,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings()
    worker, enqueuer = Worker(settings), Enqueuer(settings)
    server = RedisServer(tmp_path).start()
    limits = redis.Redis.from_url(server.url)
    limiter = RedisLimiter(
        limits, worker.keys, budgets_for(worker.destinations.values(), 0.1), jitter=0.1
    )
    worker.dispatcher.limiter = limiter
    try:
        enqueuer.push(enqueuer.encode_many("servoki", [{"event_type": "p"}] * 6)[1])
        worker.drain()
        # Down between the reservation and the send: the claimed row goes back, attempt refunded.
        grant = limiter.reserve(("servoki:ip:global",), 1, 1.0)
        claim = worker.outbox.claim_due(1, 60, ["servoki"])[0]
        server.stop()
        assert worker.dispatcher.deliver(claim, ticket=grant.tickets[0]) == (None, True)
        with caplog.at_level(logging.WARNING):
            worker.pump(1.5)
        assert sandbox.stats()["servoki"]["requests"] == 0
        assert "nothing is sent until it is back" in caplog.text
        assert worker.outbox.counts()["servoki"] == {"pending": 6}
        server.start()  # back by itself: no restart of the worker
        worker.pump(2.5)
        assert sandbox.stats()["servoki"]["accepted"] == 6
        assert worker.outbox.counts()["servoki"] == {"delivered": 6}
    finally:
        worker.close()
        enqueuer.close()
        limits.close()
        server.stop()


# -- the limiter failing between reserve and send ----------------------------------------------


class ReserveFails(RedisLimiter):
    """The real limiter, except that Redis "goes away" when the round reserves its slots."""

    def reserve_many(
        self, requests: Sequence[tuple[Sequence[str], int]], horizon: float
    ) -> list[Grant]:
        raise LimiterUnavailable("the limiter's Redis went away (test)")


def test_claims_go_back_when_the_limiter_fails_mid_plan(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(datalook_api_key=None)  # servoki's plan is the round's first
    [event_id] = enqueue(settings, "servoki", purchases(1))
    worker = Worker(settings)
    worker.limiter = worker.dispatcher.limiter = ReserveFails(
        worker.redis, worker.keys, worker.build_limiter().budgets
    )
    try:
        worker.drain()
        with pytest.raises(LimiterUnavailable):
            worker.dispatch()  # claims its row, then reserving a slot for it fails
        row = rows(worker)[event_id]
    finally:
        worker.close()
    assert row.status == "pending" and row.lease_token is None and row.attempts == 0
    assert sandbox.events("servoki") == []
