"""Nothing lost, nothing doubled: real processes killed, restarted or starved, then every event
counted at the API. Each test enqueues a thousand events of each kind unless it says otherwise."""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

import relay
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.faults import Workload, run_flush, start_pump, stop, wait_for
from tests.support.services import Postgres, RedisServer

pytestmark = pytest.mark.slow
N = 1000


@pytest.fixture
def fault_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: object) -> Settings:
        values: dict[str, object] = {
            "heartbeat_seconds": 1.0,
            "lease_seconds": 3.0,
            "read_timeout": 1.0,
            "pump_seconds": 3.0,
            "backoff_base": 0.05,
            "backoff_cap": 0.5,
        }
        values.update(overrides)
        return make_settings(**values)

    return make


@pytest.fixture
def enqueuer_for() -> Iterator[Callable[[Settings], Enqueuer]]:
    made: list[Enqueuer] = []

    def make(settings: Settings) -> Enqueuer:
        made.append(Enqueuer(settings))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.mark.parametrize("failpoint", ["drain.after_take", "drain.after_commit"])
def test_kill_during_drain(
    failpoint: str,
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    db_url: str,
) -> None:
    """kill -9 after the batch left the queue, before (or after) the outbox commit."""
    settings = fault_settings()
    work = Workload()
    work.enqueue(enqueuer_for(settings), N)
    crashed = run_flush(settings, failpoint=failpoint)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    time.sleep(settings.heartbeat_seconds + 0.2)  # the dead consumer's heartbeat expires
    result = run_flush(settings)
    assert result.returncode == 0, result.stderr
    assert work.check(sandbox, settings) == {}


def test_kill_after_the_api_accepted(
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    db_url: str,
) -> None:
    """kill -9 after a POST succeeded, before the outcome was written: resent with the same id."""
    settings = fault_settings(send_concurrency=4)
    work = Workload()
    work.enqueue(enqueuer_for(settings), N)
    crashed = run_flush(settings, failpoint="dispatch.after_send:300")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    time.sleep(settings.lease_seconds + 0.2)  # the dead worker's leases run out
    result = run_flush(settings)
    assert result.returncode == 0, result.stderr
    doubles = work.check(sandbox, settings)
    # Servoki dropped the resends (same event_id); DataLook has no dedup. What is resent is what
    # the worker had sent without writing its outcome: the round's outcomes waiting for their
    # group commit (at most one round, dispatch_batch rows per destination) and the requests
    # in flight (relay/worker/group_commit.py).
    lost_at_most = settings.dispatch_batch + settings.send_concurrency
    print(f"DataLook double sends after kill -9 mid-dispatch: {sum(doubles.values())}")
    assert sum(doubles.values()) <= lost_at_most
    assert sandbox.stats()["servoki"]["duplicates"] <= lost_at_most


def test_sqlite_two_workers_no_double_claim(
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    tmp_path: Path,
) -> None:
    settings = fault_settings(database_url=f"sqlite:///{tmp_path / 'shared.db'}")
    work = Workload()
    work.enqueue(enqueuer_for(settings), N)
    workers = [start_pump(settings, 60, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        assert wait_for(lambda: work.delivered(sandbox), timeout=120)
    finally:
        codes = [stop(w) for w in workers]
    assert codes == [0, 0]
    logs = "".join((tmp_path / f"w{i}.log").read_text() for i in range(2))
    assert "database is locked" not in logs and "Traceback" not in logs, logs[-3000:]
    assert work.check(sandbox, settings) == {}
    assert sandbox.stats()["servoki"]["duplicates"] == 0  # no row was ever sent twice


def test_api_outage_then_recovery(
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    db_url: str,
    tmp_path: Path,
) -> None:
    """5xx, timeouts and dropped connections for a while, then recovery: all delivered, the
    attempts bounded by the backoff (no hot loop); a 400 goes dead at once."""
    settings = fault_settings(backoff_base=0.2, backoff_cap=1.0, read_timeout=0.5)
    enqueuer = enqueuer_for(settings)

    def outbox_rows() -> dict[str, Any]:
        engine = make_engine(settings.resolved_database_url)
        with engine.connect() as conn:
            rows = {r.event_id: r for r in conn.execute(select(outbox))}
        engine.dispose()
        return rows

    work = Workload()
    work.enqueue(enqueuer, 300)
    rejected = {"v": 1, "d": "servoki", "id": "rejected", "t": time.time()}
    rejected["p"] = {"site": "example.com", "event_type": ""}  # the API answers 400
    enqueuer.push([json.dumps(rejected).encode()])
    sandbox.set_faults(error_rate=0.6, error_status=503, drop_rate=0.2, latency_ms=0)
    worker = start_pump(settings, 60, tmp_path / "w.log")
    try:
        time.sleep(2.0)
        sandbox.set_faults(outage=True)
        time.sleep(1.0)
        sandbox.set_faults(
            outage=False, error_rate=0.0, drop_rate=0.0, latency_ms=800, apis=["datalook"]
        )
        time.sleep(1.0)
        sandbox.clear_faults()
        assert wait_for(lambda: work.delivered(sandbox), timeout=120)
        # A request the API received after the relay's deadline had passed is retried: the
        # row is delivered only when that retry's answer is written.
        assert wait_for(lambda: "pending" not in {r.status for r in outbox_rows().values()}, 60)
    finally:
        assert stop(worker) == 0
    stats = sandbox.stats()
    requests = stats["servoki"]["requests"] + stats["datalook"]["requests"]
    events = len(work.servoki) + len(work.datalook) + 1
    print(f"requests per event through the outage: {requests / events:.2f}")
    assert requests <= events * 8  # backoff, not a hot loop
    rows = outbox_rows()
    assert rows["rejected"].status == "dead" and rows["rejected"].last_status == 400
    assert max(r.attempts for r in rows.values()) <= 12
    assert all(r.status == "delivered" for k, r in rows.items() if k != "rejected")


def test_redis_restart_under_load(
    fault_settings: Callable[..., Settings],
    sandbox: SandboxProcess,
    tmp_path: Path,
) -> None:
    """Redis (AOF on) stopped and started while events are enqueued and drained: enqueue falls
    back to the outbox while Redis is down, and the worker resumes by itself."""
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.directory.mkdir()
    server.start()
    settings = fault_settings(redis_url=server.url, enqueue_timeout=0.2)
    worker = start_pump(settings, 90, tmp_path / "w.log")
    client = relay.configure(settings)
    work = Workload()
    failures: list[BaseException] = []

    def produce() -> None:
        try:
            for i in range(600):
                work.add_one(lambda d, p, e: relay.enqueue(d, p, event_id=e), i)
                time.sleep(0.005)
        except BaseException as exc:
            failures.append(exc)

    producer = threading.Thread(target=produce)
    try:
        producer.start()
        time.sleep(1.0)
        server.stop()  # SIGTERM: Redis writes its AOF and exits
        time.sleep(1.0)
        server.start()
        producer.join()
        assert failures == []
        assert wait_for(lambda: work.delivered(sandbox), timeout=120), sandbox.stats()
    finally:
        producer.join()
        assert stop(worker) == 0
        client.close()
        server.stop()
    assert work.check(sandbox, settings) == {}
    assert "Traceback" not in (tmp_path / "w.log").read_text()


def test_postgres_restart_mid_insert_and_commit(
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    postgres: Postgres,
    tmp_path: Path,
) -> None:
    settings = fault_settings(database_url=postgres.fresh(), batch_size=100)
    work = Workload()
    work.enqueue(enqueuer_for(settings), N)
    sandbox.set_faults(latency_ms=2)
    worker = start_pump(settings, 90, tmp_path / "w.log")
    try:
        # Restart once the worker is up and sending, so the restarts land mid-delivery.
        assert wait_for(lambda: sandbox.stats()["servoki"]["requests"] > 0, timeout=30)
        for _ in range(3):
            postgres.restart()
            time.sleep(1.0)
        assert wait_for(lambda: work.delivered(sandbox), timeout=60), (
            sandbox.stats(),
            (tmp_path / "w.log").read_text()[-5000:],
        )
    finally:
        assert stop(worker) == 0
    doubles = work.check(sandbox, settings)
    # Outcomes whose write fails are held and written again once PostgreSQL is back; only a
    # restart that outlasts that patience loses the outcome of a request in flight (resent
    # when its lease ends): at most one per sending thread per restart.
    print(f"DataLook double sends across 3 PostgreSQL restarts: {sum(doubles.values())}")
    assert sum(doubles.values()) <= 3 * settings.send_concurrency


def test_enqueue_with_redis_and_database_down_fails_fast(tmp_path: Path) -> None:
    """Both down: a clear RelayUnavailable within the bound, naming both causes."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections, never answers: the worst case for a client
    port = silent.getsockname()[1]
    from tests.support.services import SERVOKI_KEY

    client = relay.configure(
        Settings(
            redis_url=f"redis://127.0.0.1:{port}/0",
            database_url="postgresql+psycopg://relay:pw@127.0.0.1:9/relay",
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
            enqueue_timeout=0.1,
        )
    )
    try:
        started = time.monotonic()
        with pytest.raises(relay.RelayUnavailable) as info:
            relay.enqueue("servoki", {"event_type": "purchase"})
        elapsed = time.monotonic() - started
    finally:
        client.close()
        silent.close()
    message = str(info.value)
    assert f"Redis at redis://127.0.0.1:{port}/0 failed: TimeoutError" in message
    assert (
        "the outbox database at postgresql+psycopg://relay:***@127.0.0.1:9/relay failed too"
        in message
    )
    assert "pw" not in message.replace("***", "")
    assert elapsed < 3.0  # one Redis timeout plus one refused connection, no retry loops


def test_poison_items_inside_large_batches(
    fault_settings: Callable[..., Settings],
    enqueuer_for: Callable[[Settings], Enqueuer],
    sandbox: SandboxProcess,
    db_url: str,
) -> None:
    """Invalid JSON, oversized and unknown-destination items among thousands of good ones:
    quarantined with their reason, everything else delivered, nothing looped on."""
    settings = fault_settings()
    enqueuer = enqueuer_for(settings)
    work = Workload()
    poison = [
        b"{truncated",
        json.dumps({"v": 1, "d": "nowhere", "id": "x", "t": time.time(), "p": {}}).encode(),
        b'{"v":1,"d":"servoki","id":"big","p":{"blob":"' + b"x" * 40000 + b'"}}',
    ]
    for _ in range(4):
        work.enqueue(enqueuer, N // 4)
        enqueuer.push(poison)
    result = run_flush(settings)
    assert result.returncode == 0, result.stderr
    assert work.check(sandbox, settings) == {}
    keys, client = enqueuer.keys, enqueuer._redis
    assert int(client.get(keys.quarantined_total) or 0) == 12
    assert client.llen(keys.quarantine) == 12
    assert client.llen(keys.queue) == 0
