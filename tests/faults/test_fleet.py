"""A fleet: three worker hosts share one Redis and one PostgreSQL, and one of them dies.

Each host is a worker process with its own host name (so its own consumer ids) and its own
egress IP (see tests/support/fleet.py). Servoki counts its limit per client IP: with
``RELAY_SERVOKI_EGRESS_SCOPE=host`` each host has a bucket of its own and the fleet may send
three times the limit; behind one NAT (``global``, one shared IP) the fleet shares one bucket.
DataLook counts per key, so the fleet always shares one bucket for it.

The middle host is killed with SIGKILL mid-backlog, at one of two lines: right after it moved
a batch from the queue into its processing list (the reaper must give the batch back), or right
after an API accepted one of its requests, with its other requests and leased rows in flight
(the leases must run out and another host resend them). Then every event is counted at the
API: Servoki once per event_id, DataLook doubles bounded by the rows the dead host held.

The real limits' rates with shorter windows (test time): Servoki 10/s per IP (600/60s) as
20/2s, DataLook 50/s per key (500/10s) as 100/2s.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from relay.dev.sandbox import SandboxProcess
from relay.keys import Keys, as_text
from relay.limiter import RateLimit, plan
from relay.settings import Settings
from tests.support.faults import stop, wait_for
from tests.support.fleet import Host, Producer, leased_rows, pending_rows, rate, start_host
from tests.support.services import Postgres

pytestmark = pytest.mark.slow

SERVOKI_LIMIT = "20/2s"
DATALOOK_LIMIT = "100/2s"
HOSTS = ("host-a", "host-b", "host-c")
DOOMED = "host-b"
# The line the doomed host dies at, the first time it gets there once the backlog has run for
# KILL_AFTER seconds: a batch just taken from the queue (it holds a processing list, no request
# in flight), or a request just answered (its other requests in flight, rows leased, that
# answer not yet recorded).
KILL_POINTS = {"mid-drain": "drain.after_take", "mid-dispatch": "dispatch.after_send"}
KILL_AFTER = 4.0
EGRESS = {
    # Each host its own IP and its own Servoki bucket (RELAY_SERVOKI_EGRESS_SCOPE=host).
    "per-host": ("host", ("127.0.0.2", "127.0.0.3", "127.0.0.4")),
    # Every host behind one NAT: one IP, one bucket (the default, global).
    "shared": ("global", ("127.0.0.2",) * 3),
}
MEASURED_AFTER = 4.0
"""Seconds after the kill that throughput is measured (and events keep arriving)."""
OVERSHOOT = 1.1
"""Events arrive this much faster than the fleet may send them."""


@pytest.fixture
def fleet_settings(
    make_settings: Callable[..., Settings], postgres: Postgres, sandbox: SandboxProcess
) -> Settings:
    sandbox.configure(servoki_limit=SERVOKI_LIMIT, datalook_limit=DATALOOK_LIMIT)
    return make_settings(
        database_url=postgres.fresh(),
        servoki_rate_limit=SERVOKI_LIMIT,
        datalook_rate_limit=DATALOOK_LIMIT,
        heartbeat_seconds=1.0,
        lease_seconds=3.0,
        read_timeout=1.0,
        backoff_base=0.05,
        backoff_cap=0.5,
    )


@pytest.fixture
def fleet_client(fleet_settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(fleet_settings.resolved_redis_url)
    yield client
    client.close()


def consumers_of(client: redis.Redis, keys: Keys, host: str) -> list[str]:
    """The consumer ids of ``host`` that may own a processing list."""
    members = (as_text(m) for m in client.smembers(keys.consumers))
    return sorted(m for m in members if m.startswith(f"{host}:"))


def running_hosts(client: redis.Redis, keys: Keys) -> set[str]:
    """Hosts with a worker that told ``relay status`` it runs (consumer id ``host:pid:…``)."""
    return {as_text(worker).split(":", 1)[0] for worker in client.hkeys(keys.workers)}


def phase_rate(times: list[float], start: float, end: float) -> float:
    assert end - start >= 1.5, f"a measured phase is too short ({end - start:.2f}s): resize"
    return rate(times, start, end)


@pytest.mark.parametrize("kill", sorted(KILL_POINTS))
@pytest.mark.parametrize("egress", sorted(EGRESS))
def test_three_hosts_lose_one_mid_backlog(
    egress: str,
    kill: str,
    fleet_settings: Settings,
    fleet_client: redis.Redis,
    sandbox: SandboxProcess,
    tmp_path: Path,
) -> None:
    settings, client, keys = fleet_settings, fleet_client, Keys(fleet_settings.namespace)
    scope, ips = EGRESS[egress]
    hosts: dict[str, Host] = {}
    limits = {
        "servoki": RateLimit.parse(SERVOKI_LIMIT),
        "datalook": RateLimit.parse(DATALOOK_LIMIT),
    }
    budgets = {api: plan(limit, settings.limit_jitter) for api, limit in limits.items()}
    # Buckets the fleet sends through: one per host's IP (per-host egress) or one shared.
    scopes_of = {"servoki": len(set(ips)), "datalook": 1}
    for name, ip in zip(HOSTS, ips, strict=True):
        extra = {"RELAY_SERVOKI_EGRESS_SCOPE": scope, "RELAY_BATCH_SIZE": "50"}
        if name == DOOMED:
            extra["FLEET_KILL_AT"] = KILL_POINTS[kill]
        hosts[name] = start_host(settings, name, ip, tmp_path, 120, **extra)
    doomed = hosts[DOOMED]
    try:
        # Every host is up (and idle, blocked on the empty queue) before the backlog arrives.
        assert wait_for(lambda: running_hosts(client, keys) == set(HOSTS), timeout=60), {
            name: host.output()[-2000:] for name, host in hosts.items()
        }
        # A backlog of 1.5 s at the fleet's full rate, then web handlers enqueue 10 % more than
        # the fleet can send until the measurements are over: the backlog never runs out.
        capacity = {api: sending * budgets[api].rate for api, sending in scopes_of.items()}
        producer = Producer(settings, {api: OVERSHOOT * per_s for api, per_s in capacity.items()})
        producer.push(round(1.5 * capacity["servoki"]), round(1.5 * capacity["datalook"]))
        producer.start()
        pushed = time.monotonic()
        try:
            time.sleep(KILL_AFTER)
            doomed.proc.send_signal(signal.SIGUSR1)  # dies at its next pass over the line
            assert wait_for(lambda: doomed.proc.poll() is not None, timeout=30, interval=0.01), (
                "the doomed host was not killed",
                doomed.output()[-3000:],
            )
            killed = time.monotonic()
            # What the dead host left behind, read before anyone can take it over: its
            # processing list (the reaper waits for its heartbeat to expire, 1 s) and its
            # leases (3 s).
            dead_consumers = consumers_of(client, keys, DOOMED)
            processing = sum(int(client.llen(keys.processing(c))) for c in dead_consumers)
            leased_at_kill = leased_rows(settings)
            survivors = {api: max(1, n - 1) for api, n in scopes_of.items()}
            producer.rates = {
                api: OVERSHOOT * n * budgets[api].rate for api, n in survivors.items()
            }
            time.sleep(max(0.0, killed + 1.5 - time.monotonic()))
            # Rows still held under the same lease 1.5 s on: the survivors' rounds are over
            # by then (each reserves at most 0.75 s of slots ahead), so these are the dead
            # host's.
            dead_leases = leased_at_kill & leased_rows(settings)
            time.sleep(max(0.0, killed + MEASURED_AFTER + 0.5 - time.monotonic()))
        finally:
            work = producer.stop()

        assert wait_for(lambda: work.delivered(sandbox), timeout=90), sandbox.stats()
        assert wait_for(lambda: pending_rows(settings) == 0, timeout=30)
    finally:
        codes = {name: stop(host.proc) for name, host in hosts.items()}
    assert codes.pop(DOOMED) == -signal.SIGKILL
    assert set(codes.values()) == {0}, {n: hosts[n].output()[-3000:] for n in codes}
    for name in codes:
        assert "Traceback" not in hosts[name].output(), hosts[name].output()[-3000:]

    # -- the dead host's work was taken over, each event delivered once --------------------
    doubles = work.check(sandbox, settings)  # Servoki once per event_id, outbox all delivered
    stats = sandbox.stats()
    dead_by_api = {api: sum(1 for _, d, _ in dead_leases if d == api) for api in stats}
    double_sends = sum(doubles.values()) + stats["servoki"]["duplicates"]
    print(
        f"\n{egress} egress, killed {kill} {killed - pushed:.1f}s into the backlog: "
        f"processing list {processing} items, leased rows {dead_by_api}; "
        f"DataLook doubles {sum(doubles.values())}, Servoki resends dropped "
        f"{stats['servoki']['duplicates']}"
    )
    assert dead_consumers, "the dead host's consumer id must have been registered"
    for consumer in dead_consumers:
        assert not client.exists(keys.processing(consumer))
    assert consumers_of(client, keys, DOOMED) == []
    if kill == "mid-drain":
        assert processing > 0, "the dead host must have held a batch in its processing list"
        assert double_sends == 0  # it had no request in flight
    else:
        # The request answered just before the kill was never recorded: its row was resent
        # once the lease ran out, and only rows the dead host held can have gone out twice.
        assert double_sends >= 1
        assert sum(doubles.values()) <= dead_by_api["datalook"]
        assert stats["servoki"]["duplicates"] <= dead_by_api["servoki"]
    for api in ("servoki", "datalook"):
        assert stats[api]["overlapping"] == 0, api  # never two requests for one event at once

    # -- the limits held across hosts, and the fleet used them ----------------------------
    for api, limit in limits.items():
        budget = budgets[api]
        assert stats[api]["rate_limited"] == 0, api
        peaks = stats[api]["peak_by_scope"]
        assert max(peaks.values()) <= limit.limit, (api, peaks)
        times = sorted(r["t"] for r in sandbox.requests(api))
        # Before the kill every host sends; after it, once the slots the dead host had
        # reserved (up to 0.75 s ahead) have passed.
        before = phase_rate(times, pushed + 1.0, killed)
        after = phase_rate(times, killed + 1.0, killed + MEASURED_AFTER)
        print(
            f"{api}: {before:.1f}/s from 3 hosts, {after:.1f}/s from 2; budget "
            f"{budget.rate:.1f}/s per bucket, {scopes_of[api]} bucket(s) then {survivors[api]}; "
            f"peak per {limit.window:g}s window {peaks} of {limit.limit}"
        )
        assert before >= 0.85 * scopes_of[api] * budget.rate, api
        assert after >= 0.85 * survivors[api] * budget.rate, api
    if egress == "per-host":
        servoki = sandbox.requests("servoki")
        assert {r["scope"] for r in servoki} == set(ips)  # one Servoki window per host's IP
        last_dead = max(r["t"] for r in servoki if r["scope"] == doomed.egress_ip)
        assert last_dead <= killed  # nothing sent from the dead host's IP afterwards
