"""Many DataLook keys end to end: a destination set's tenants are destinations of their own
(enqueue, outbox, status, each key's own window), a round plans all of them in one limiter call
and one claim, and every key gets its share of the sends."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from relay.dev.sandbox import SandboxProcess
from relay.limiter import RateLimit, plan
from relay.ops.admin import Admin
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.limits import make_limiter
from tests.support.pipeline import enqueue, rows

KEYS = {f"shop{i}": f"dl_live_k{i}many_s3cr3tvalue{i}" for i in range(4)}


@pytest.fixture
def tenants(
    make_settings: Callable[..., Settings],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sandbox: SandboxProcess,
) -> Iterator[Callable[..., Settings]]:
    """Settings whose DataLook destinations are one set of four tenants (a keys file), the
    sandbox as their API; ``limit`` is each key's, on both sides."""

    def make(limit: str = "100000/1s", **overrides: object) -> Settings:
        keys = tmp_path / "keys.toml"
        keys.write_text("".join(f'{name} = "{key}"\n' for name, key in KEYS.items()))
        keys.chmod(0o600)
        config = tmp_path / "relay.toml"
        config.write_text(
            f'[destination_sets.shops]\nkind = "datalook"\nurl = "{sandbox.url}"\n'
            f'rate_limit = "{limit}"\nkeys_file = "{keys}"\nprefix = "dl-"\n'
        )
        monkeypatch.setenv("RELAY_CONFIG", str(config))
        return make_settings(datalook_api_key=None, **overrides)

    yield make
    sandbox.configure(datalook_limit=None)


def pages(n: int) -> list[dict[str, object]]:
    return [{"event_name": "click", "page_path": f"/{i}"} for i in range(n)]


def test_each_tenant_is_a_destination_end_to_end(
    tenants: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = tenants()
    for name in KEYS:
        enqueue(settings, f"dl-{name}", pages(3))
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=5)
    finally:
        worker.close()
    assert report.exit_code == 0 and report.dispatched.delivered == 12
    scopes = Counter(event["scope"] for event in sandbox.events("datalook"))
    assert scopes == {f"k{i}many": 3 for i in range(4)}  # each tenant with its own key
    admin = Admin(settings)
    try:
        status = admin.status()
    finally:
        admin.close()
    assert set(status.destinations) == {"servoki", *(f"dl-{name}" for name in KEYS)}
    assert all(status.destinations[f"dl-{name}"].delivered == 3 for name in KEYS)


def test_a_round_reserves_and_claims_every_tenant_at_once(
    tenants: Callable[..., Settings], db_url: str, sandbox: SandboxProcess
) -> None:
    """One reserve_many call and one claim statement a round, whatever the number of keys."""
    settings = tenants(database_url=db_url)
    for i, name in enumerate(KEYS):
        enqueue(settings, f"dl-{name}", pages(i + 1))
    worker = Worker(settings)
    calls: Counter[str] = Counter()
    limiter, outbox = worker.dispatcher.limiter, worker.outbox
    reserve_many, claim_due_each = limiter.reserve_many, outbox.claim_due_each

    def counted_reserve(requests: list[object], horizon: float) -> object:
        # A slot missed on a slow machine is reserved again alone: not the round's plan.
        calls["reserve_many"] += len(requests) > 1
        return reserve_many(requests, horizon)  # type: ignore[arg-type]

    def counted_claim(*args: object, **kwargs: object) -> object:
        calls["claim_due_each"] += 1
        return claim_due_each(*args, **kwargs)  # type: ignore[arg-type]

    try:
        worker.drain()
        limiter.reserve_many = counted_reserve  # type: ignore[method-assign]
        outbox.claim_due_each = counted_claim  # type: ignore[method-assign]
        first = worker.dispatch()
        assert (first.claimed, first.delivered) == (1 + 2 + 3 + 4, 10)
        assert calls == {"reserve_many": 1, "claim_due_each": 1}
    finally:
        worker.close()


def test_a_slow_claim_does_not_make_the_rounds_slots_late(
    tenants: Callable[..., Settings], db_url: str, sandbox: SandboxProcess
) -> None:
    """Rows first, slots second: a claim that takes 300 ms (a database hiccup) comes before
    the slots are reserved, so none of them is missed. Reserved first, every slot of the
    round was 300 ms late (past the 50 ms margin): each was lost to its bucket and reserved
    again, one at a time."""
    settings = tenants("20/1s", database_url=db_url, limit_jitter=0.1)
    for name in KEYS:
        enqueue(settings, f"dl-{name}", pages(5))
    worker = Worker(settings)
    outbox = worker.outbox
    claim_due_each = outbox.claim_due_each

    def slow_claim(*args: object, **kwargs: object) -> object:
        time.sleep(0.3)
        return claim_due_each(*args, **kwargs)  # type: ignore[arg-type]

    try:
        worker.drain()
        outbox.claim_due_each = slow_claim  # type: ignore[method-assign]
        report = worker.dispatch()
        stats = worker.limiter.stats  # type: ignore[attr-defined]
    finally:
        worker.close()
    assert report.claimed == report.delivered >= 4  # what the slots of 0.15 s allow
    assert stats.missed == 0 and stats.stale == 0


def test_rows_no_slot_came_for_go_back_untouched(
    tenants: Callable[..., Settings], db_url: str, sandbox: SandboxProcess
) -> None:
    """Another worker holds every slot of the next seconds: the rows this round claimed go
    back (attempt refunded, no lease), due when the bucket has room, and nothing is sent."""
    settings = tenants("3/1s", database_url=db_url)
    ids = enqueue(settings, "dl-shop0", pages(3))
    worker = Worker(settings)
    try:
        worker.drain()
        [scope] = worker.destinations["dl-shop0"].limit_scopes()
        # Every slot of the next 5 s, taken by "another worker" sharing the bucket.
        while worker.limiter.reserve((scope,), 10, 5.0).tickets:
            pass
        report = worker.dispatch()
        found = rows(worker)
    finally:
        worker.close()
    assert report.claimed == 0 and report.delivered == 0
    assert 4.0 < report.limited["dl-shop0"] <= 5.5
    assert sandbox.events("datalook") == []
    for event_id in ids:
        row = found[event_id]
        assert (row.status, row.attempts, row.lease_token) == ("pending", 0, None)


def test_claim_due_each_takes_each_destinations_count_and_leases_them(
    tenants: Callable[..., Settings], db_url: str
) -> None:
    settings = tenants(database_url=db_url)
    for name in KEYS:
        enqueue(settings, f"dl-{name}", pages(3))
    worker = Worker(settings)
    try:
        worker.drain()
        wants = {"dl-shop0": 2, "dl-shop1": 5, "dl-shop2": 0, "dl-nothing": 4}
        first = worker.outbox.claim_due_each(wants, 30.0)
        assert Counter(c.destination for c in first) == {"dl-shop0": 2, "dl-shop1": 3}
        assert all(c.attempts == 1 for c in first)
        second = worker.outbox.claim_due_each({"dl-shop0": 5, "dl-shop1": 5}, 30.0)
        assert Counter(c.destination for c in second) == {"dl-shop0": 1}  # the rest is leased
        assert not {c.id for c in first} & {c.id for c in second}
        assert worker.outbox.claim_due_each({}, 30.0) == []
    finally:
        worker.close()


def test_reserve_many_serves_requests_in_order_on_shared_scopes(
    redis_client: redis.Redis,
) -> None:
    """The same slots as one reserve call after another, in one round trip."""
    budget = plan(RateLimit.parse("10/1s"), 0.0)
    limiter = make_limiter(redis_client, "many1", "10/1s")
    limiter.budgets["t"] = budget
    grants = limiter.reserve_many([(("s",), 3), (("s", "t"), 2), (("t",), 0), (("t",), 2)], 1.0)
    assert [len(g.tickets) for g in grants] == [3, 2, 0, 2]
    slots = [[ticket.due for ticket in g.tickets] for g in grants]
    interval = budget.interval_us
    start = slots[0][0]
    assert slots[0] == [start, start + interval, start + 2 * interval]
    assert slots[1] == [start + 3 * interval, start + 4 * interval]  # after s's first three
    assert slots[3] == [start + 5 * interval, start + 6 * interval]  # after t's two
    # The one-by-one answer on fresh buckets is the same.
    other = make_limiter(redis_client, "many2", "10/1s")
    other.budgets["t"] = budget
    one = [other.reserve(("s",), 3, 1.0), other.reserve(("s", "t"), 2, 1.0)]
    gaps = [[t.due - one[0].tickets[0].due for t in g.tickets] for g in one]
    assert gaps == [[s - start for s in slots[0]], [s - start for s in slots[1]]]
    # Refunds still work per grant: the last grant of t gives its slots back.
    limiter.refund(grants[3], 2)
    again = limiter.reserve(("t",), 1, 1.0)
    assert again.tickets[0].due - start == 5 * interval


@pytest.mark.slow
def test_every_key_gets_its_share_within_its_own_window(
    tenants: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    """Four keys with a backlog each, one worker for 3 s: the sandbox enforces each key's
    window; every key is served at the same pace and none is refused."""
    limit = "20/1s"
    sandbox.configure(datalook_limit=limit)
    settings = tenants(limit, send_concurrency=8)
    for name in KEYS:
        enqueue(settings, f"dl-{name}", pages(200))
    worker = Worker(settings)
    try:
        worker.drain()
        worker.pump(3.0)
    finally:
        worker.close()
    log = sandbox.requests("datalook")
    assert [r for r in log if r["status"] != 204] == []
    sent = Counter(r["scope"] for r in log)
    assert set(sent) == {f"k{i}many" for i in range(4)}
    budget = plan(RateLimit.parse(limit), settings.limit_jitter)
    assert min(sent.values()) >= 0.9 * max(sent.values())
    assert min(sent.values()) >= budget.rate * 3.0 * 0.5  # a slow machine still sends
    assert max(sent.values()) <= budget.capacity + budget.rate * 3.5
