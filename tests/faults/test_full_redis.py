"""A full Redis (``maxmemory`` reached, ``noeviction``) drains itself out of it.

At its memory limit Redis refuses every command that may grow memory, and a Lua script whose
first write is such a command. These tests fill a real redis-server past its limit and check
that every write the relay makes still goes through, that ``enqueue()`` falls back to the
outbox, and that a worker (in-process, and real Celery worker and beat processes) delivers
every accepted event and brings Redis back under its limit.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from relay.cli import main
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.keys import Keys
from relay.limiter import RedisLimiter
from relay.limiter.budget import RateLimit, plan
from relay.limiter.pauses import Pauses
from relay.ops.admin import Admin
from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.outbox.store import Outbox
from relay.queue.consumer import Queue
from relay.queue.memory import redis_memory
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.services import ROOT, RedisServer, relay_env

PADDING = "x" * 900


@pytest.fixture
def small_redis() -> Iterator[RedisServer]:
    # A short directory: unix socket paths are limited to ~100 characters.
    directory = Path(f"/tmp/relay-oom-{uuid.uuid4().hex[:8]}")
    directory.mkdir()
    server = RedisServer(directory).start()
    yield server
    server.stop()
    shutil.rmtree(directory, ignore_errors=True)


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def over_the_limit(client: redis.Redis) -> None:
    """Put Redis past its memory limit: ``maxmemory`` below what it already uses."""
    client.rpush("ballast", *[PADDING.encode()] * 400)
    client.config_set("maxmemory", used_memory(client) - 200_000)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")


def fill_by_enqueue(settings: Settings, limit: int) -> tuple[list[str], int]:
    """Enqueue until Redis refuses and events land in the outbox; (every id, fallbacks)."""
    client = redis.Redis.from_url(settings.resolved_redis_url)
    client.config_set("maxmemory", used_memory(client) + limit)
    client.close()
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)  # the fallback writes only into a migrated outbox
    outbox = Outbox(engine)
    enqueuer = Enqueuer(settings)
    outbox_rows = 0
    ids: list[str] = []
    try:
        while outbox_rows < 30:
            payload = {"event_type": "purchase", "value": len(ids), "props": {"pad": PADDING}}
            event_id, item = enqueuer.encode("servoki", payload)
            enqueuer.push([item])
            ids.append(event_id)
            if len(ids) % 10 == 0:
                outbox_rows = sum(c.get("pending", 0) for c in outbox.counts().values())
            assert len(ids) < 20_000, "Redis never refused a write: is maxmemory set?"
    finally:
        enqueuer.close()
        engine.dispose()
    # Right at the limit, memory flutters (client buffers come and go) and a small write may
    # slip through; a limit just below what Redis holds keeps it refusing every growing write.
    client = redis.Redis.from_url(settings.resolved_redis_url)
    client.config_set("maxmemory", used_memory(client) - 64_000)
    client.close()
    return ids, outbox_rows


def delivered_ids(sandbox: SandboxProcess) -> set[str]:
    return {event["body"]["event_id"] for event in sandbox.events("servoki")}


# -- every write the relay makes goes through on a full Redis ---------------------------


def test_draining_heartbeats_limiter_and_pauses_work_on_a_full_redis(
    small_redis: RedisServer,
) -> None:
    client = redis.Redis.from_url(small_redis.url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    item = json.dumps({"v": 1, "d": "servoki", "id": "e1", "t": time.time(), "p": {}}).encode()
    client.rpush(keys.queue, item, item.replace(b'"e1"', b'"e2"'), b"not json")
    over_the_limit(client)

    queue = Queue(client, keys, known_destinations=frozenset({"servoki"}))
    queue.beat()
    queue.alive()
    batch = queue.take(10)
    assert [event.event_id for event in batch.events] == ["e1", "e2"]
    assert len(batch.poison) == 1
    queue.ack(batch.poison)
    assert client.llen(keys.queue) == 0 and client.llen(queue.processing) == 0
    assert client.llen(keys.quarantine) == 1
    assert queue.take(10, wait=0.2).events == []  # blocking on an empty queue: no error
    assert queue.reap() == 0
    assert client.hexists(keys.workers, queue.consumer)
    assert client.exists(keys.heartbeat(queue.consumer))

    budget = plan(RateLimit.parse("10/1s"), 0.1)
    limiter = RedisLimiter(client, keys, {"s": budget})
    grant = limiter.reserve(["s"], 3, 1.0)
    assert len(grant.tickets) == 3
    limiter.refund(grant, 1)
    assert limiter.wait(grant.tickets[0]).go
    assert limiter.throttle(["s"], 0.5) > 0

    pauses = Pauses(client, keys, probe_seconds=0.001)
    pauses.pause("servoki", "HTTP 401: the API refused the key", 401)
    record = pauses.all()["servoki"]
    time.sleep(0.01)
    assert pauses.take_probe("servoki", record)
    pauses.pause("servoki", "HTTP 401: the API refused the key", 401, probe=True)
    assert pauses.all()["servoki"]["interval"] > record["interval"]
    assert pauses.resume("servoki")
    queue.leave()
    assert not client.sismember(keys.consumers, queue.consumer)
    # Still full: nothing above freed the ballast, so each write above ran at the limit.
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")
    client.close()


def test_a_dead_consumers_batch_is_reaped_on_a_full_redis(small_redis: RedisServer) -> None:
    client = redis.Redis.from_url(small_redis.url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    items = [
        json.dumps({"v": 1, "d": "servoki", "id": f"e{i}", "t": time.time(), "p": {}}).encode()
        for i in range(3)
    ]
    client.rpush(keys.queue, *items)
    dead = Queue(client, keys, heartbeat_seconds=0.2, known_destinations=frozenset({"servoki"}))
    assert len(dead.take(3)) == 3
    over_the_limit(client)
    time.sleep(0.3)  # its heartbeat expires
    assert Queue(client, keys).reap() == 3  # the script's first write (RPOP) frees memory
    assert client.lrange(keys.queue, 0, -1) == items
    assert not client.exists(dead.processing)
    assert not client.sismember(keys.consumers, dead.consumer)
    client.close()


# -- enqueue falls back; a worker drains Redis back under its limit ---------------------


def test_a_worker_delivers_everything_and_brings_a_full_redis_back_under_its_limit(
    small_redis: RedisServer, make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(redis_url=small_redis.url)
    ids, fallbacks = fill_by_enqueue(settings, limit=600_000)
    client = redis.Redis.from_url(small_redis.url)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("probe", "1")
    assert fallbacks >= 30 and len(ids) > fallbacks

    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=5)
    finally:
        worker.close()
    assert report.exit_code == 0, report
    assert delivered_ids(sandbox) == set(ids)
    memory = redis_memory(client)
    assert memory.maxmemory and not memory.full
    client.set("probe", "1")  # accepts writes again
    client.close()


def test_status_and_health_say_when_redis_is_full(
    small_redis: RedisServer, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(redis_url=small_redis.url)
    client = redis.Redis.from_url(small_redis.url)
    admin = Admin(settings)
    try:
        assert admin.health(None) is None
        assert not admin.status().redis.full
        over_the_limit(client)
        problem = admin.health(None)
        assert problem is not None and "at its memory limit" in problem
        assert "maxmemory" in problem
        status = admin.status()
        assert status.redis.full and status.redis.maxmemory > 0
    finally:
        admin.close()
    env = relay_env(settings)
    runner = CliRunner()
    result = runner.invoke(main, ["status"], env=env)
    assert result.exit_code == 0, result.output
    assert "Redis is at its memory limit" in result.output
    result = runner.invoke(main, ["health", "--no-workers"], env=env)
    assert result.exit_code == 1
    assert "at its memory limit" in result.output
    client.close()


# -- the production shape: Celery worker and beat on the same full Redis ----------------


@pytest.mark.slow
def test_celery_worker_and_beat_recover_a_full_redis(
    small_redis: RedisServer,
    make_settings: Callable[..., Settings],
    sandbox: SandboxProcess,
    tmp_path: Path,
) -> None:
    """Celery's broker is the same Redis: while it is full, beat cannot publish wake-ups and
    the worker cannot record its unacked messages, so the relay must drain without them."""
    settings = make_settings(redis_url=small_redis.url)
    ids, _ = fill_by_enqueue(settings, limit=600_000)
    client = redis.Redis.from_url(small_redis.url)
    env = relay_env(settings, RELAY_PUMP_SECONDS="3")
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, *args: str) -> None:
        logs.append(tmp_path / f"{name}.log")
        with open(logs[-1], "wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "tasks", *args],
                    env=env,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def everything_delivered() -> bool:
        return delivered_ids(sandbox) >= set(ids)

    try:
        start("worker", "worker", "--concurrency", "2", "--without-mingle", "--without-gossip")
        start("beat", "beat", "-s", str(tmp_path / "beat-schedule"))
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not everything_delivered():
            time.sleep(0.5)
        text = "\n".join(path.read_text(errors="replace")[-4000:] for path in logs)
        assert everything_delivered(), text
        assert not redis_memory(client).full
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client.close()
    assert sandbox.stats()["servoki"]["duplicates"] == 0


@pytest.mark.slow
def test_redis_filling_up_under_a_running_celery_worker_does_not_stop_delivery(
    small_redis: RedisServer,
    make_settings: Callable[..., Settings],
    sandbox: SandboxProcess,
    tmp_path: Path,
) -> None:
    """Another application fills the shared Redis while the relay runs: the worker keeps
    delivering (events enqueued meanwhile fall back to the outbox), and recovers after."""
    settings = make_settings(redis_url=small_redis.url)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    engine.dispose()
    client = redis.Redis.from_url(small_redis.url)
    env = relay_env(settings, RELAY_PUMP_SECONDS="3")
    logs = [tmp_path / "worker.log", tmp_path / "beat.log"]
    commands = [
        ["worker", "--concurrency", "2", "--without-mingle", "--without-gossip"],
        ["beat", "-s", str(tmp_path / "beat-schedule")],
    ]
    procs: list[subprocess.Popen[bytes]] = []
    enqueuer = Enqueuer(settings)
    sent: list[str] = []

    def send(n: int) -> None:
        for _ in range(n):
            event_id, item = enqueuer.encode("servoki", {"event_type": "purchase"})
            enqueuer.push([item])
            sent.append(event_id)

    def wait_delivered(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if delivered_ids(sandbox) >= set(sent):
                return True
            time.sleep(0.3)
        return False

    try:
        for log_path, args in zip(logs, commands, strict=True):
            with open(log_path, "wb") as log:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "celery", "-A", "tasks", *args],
                        env=env,
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
        send(20)
        assert wait_delivered(30), "\n".join(p.read_text()[-3000:] for p in logs)
        over_the_limit(client)  # the other application's data
        time.sleep(5)  # past every pump that was running (3 s each): only wake-ups are left
        send(30)  # Redis refuses: these go to the outbox
        assert wait_delivered(40), "\n".join(p.read_text()[-3000:] for p in logs)
        assert all(proc.poll() is None for proc in procs), "a Celery process died"
        assert "Couldn't apply scheduled task pump" in logs[1].read_text()  # none were sent
        client.delete("ballast")  # the other application frees its data
        send(20)
        assert wait_delivered(30), "\n".join(p.read_text()[-3000:] for p in logs)
    finally:
        enqueuer.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        client.close()
