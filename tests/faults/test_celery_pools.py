"""Celery pools other than prefork: threads and solo deliver every event once; green pools are
refused at start.

Under ``-P threads`` several pumps run at once in one process. Each thread must have its own
queue consumer: with one processing list shared between threads, a pump that woke up on the
blocking move (an idle relay, an event arriving) found its item already dropped by another
thread's ack, and the event was lost.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.concurrency.solo import TaskPool as SoloPool
from sqlalchemy import func, select

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.keys import Keys
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.faults import stop, wait_for
from tests.support.services import ROOT, relay_env

pytestmark = pytest.mark.slow


class GreenPool(SoloPool):
    """A pool that says it runs greenlets, as gevent's and eventlet's do (neither installed)."""

    is_green = True


def celery(settings: Settings, log: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", *args],
            env=relay_env(settings, **env),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def worker_args(settings: Settings, pool: str, concurrency: int) -> list[str]:
    return [
        "worker",
        "-P",
        pool,
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"{pool}@{settings.namespace}",
    ]


def wake_ups(settings: Settings) -> Callable[[], None]:
    """Send one ``relay.pump`` wake-up, as beat does."""
    url = settings.resolved_redis_url
    app = Celery("pump-sender", broker="redis+socket://" + url.removeprefix("unix://"))
    queue = f"{settings.namespace}.wakeups"

    def send() -> None:
        app.send_task("relay.pump", queue=queue, expires=5.0)

    return send


def wait_for_progress(count: Callable[[], int], goal: int, stall: float) -> int:
    """Wait until ``count()`` reaches ``goal`` or stops moving for ``stall`` seconds."""
    last, moved = -1, time.monotonic()
    while True:
        now = count()
        if now >= goal:
            return now
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > stall:
            return now
        time.sleep(0.2)


def servoki_events(enqueuer: Enqueuer, n: int) -> tuple[list[str], list[bytes]]:
    return enqueuer.encode_many(
        "servoki", [{"event_type": "purchase", "value": float(i)} for i in range(n)]
    )


def assert_nothing_left(settings: Settings, delivered: int) -> None:
    """An empty queue, no processing list, no consumer registered, every row delivered."""
    keys = Keys(settings.namespace)
    client = redis.Redis.from_url(settings.resolved_redis_url)
    try:
        assert client.llen(keys.queue) == 0
        assert list(client.scan_iter(match=keys.processing("*"))) == []
        # Every Worker was closed at shutdown: none is left registered.
        assert client.hlen(keys.workers) == 0
        assert client.scard(keys.consumers) == 0
    finally:
        client.close()
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            query = select(outbox.c.status, func.count()).group_by(outbox.c.status)
            statuses = dict(conn.execute(query).all())
    finally:
        engine.dispose()
    assert statuses == {"delivered": delivered}


def test_threads_pool_delivers_every_event_exactly_once(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Four pumps in one process, on a backlog and on a trickle: none lost, none sent twice."""
    settings = make_settings(pump_seconds=3.0)
    settings.home.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "worker.log"
    # Small batches: many takes and acks, each racing the other threads'.
    worker = celery(settings, log, *worker_args(settings, "threads", 4), RELAY_BATCH_SIZE="20")
    beat = celery(settings, tmp_path / "beat.log", "beat", "-s", str(settings.home / "beat"))
    enqueuer = Enqueuer(settings)
    wake = wake_ups(settings)
    expected: set[str] = set()
    try:
        # A backlog: four pumps take batches side by side.
        for _ in range(30):
            ids, items = servoki_events(enqueuer, 50)
            enqueuer.push(items)
            expected.update(ids)
            wake()
        # A trickle: pumps go idle, block on the queue and wake up for a burst of three
        # pushes, while the others take and ack theirs (what lost events with one consumer).
        for burst in range(500):
            for _ in range(3):
                ids, items = servoki_events(enqueuer, 1)
                enqueuer.push(items)
                expected.update(ids)
                time.sleep(0.001)
            if burst % 15 == 0:
                wake()
            time.sleep(0.03)
        arrived = wait_for_progress(
            lambda: int(sandbox.stats()["servoki"]["accepted"]), len(expected), stall=6.0
        )
    finally:
        enqueuer.close()
        stop(beat)
        code = stop(worker, signal.SIGTERM, timeout=40)
    logs = log.read_text(errors="replace")
    ids = Counter(e["body"]["event_id"] for e in sandbox.events("servoki"))
    lost = expected - set(ids)
    print(f"-P threads: {len(expected)} enqueued, {arrived} delivered, {len(lost)} lost")
    assert not lost, f"{len(lost)} of {len(expected)} events never reached the API"
    assert set(ids) == expected
    assert max(ids.values()) == 1
    assert sandbox.stats()["servoki"]["duplicates"] == 0
    assert code == 0, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert_nothing_left(settings, len(expected))


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_sigterm_ends_running_pumps_after_their_round(
    pool: str, make_settings: Callable[..., Settings], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """Pumps of a minute: a SIGTERM to the worker still stops it within seconds, cleanly."""
    settings = make_settings(pump_seconds=60.0)
    settings.home.mkdir(parents=True, exist_ok=True)
    log = tmp_path / "worker.log"
    worker = celery(settings, log, *worker_args(settings, pool, 2))
    enqueuer = Enqueuer(settings)
    wake = wake_ups(settings)
    try:
        wake()
        wake()
        _, items = servoki_events(enqueuer, 20)
        enqueuer.push(items)
        running = 2 if pool == "threads" else 1
        assert wait_for(lambda: sandbox.stats()["servoki"]["accepted"] == 20, 30), log.read_text()
        assert wait_for(lambda: log.read_text().count("] received") >= running, 10)
        started = time.monotonic()
        code = stop(worker, signal.SIGTERM, timeout=30)
        took = time.monotonic() - started
    finally:
        enqueuer.close()
        stop(worker, signal.SIGKILL)
    logs = log.read_text(errors="replace")
    print(f"-P {pool}: stopped {took:.1f} s after SIGTERM with {running} pump(s) of 60 s running")
    assert code == 0, logs[-3000:]
    assert took < 10, logs[-3000:]
    assert "Traceback" not in logs, logs[-3000:]
    assert_nothing_left(settings, 20)


def test_green_pools_are_refused_at_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    env = relay_env(settings, CELERY_CUSTOM_WORKER_POOL="tests.faults.test_celery_pools:GreenPool")
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tasks", *worker_args(settings, "custom", 2)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "runs tasks as greenlets" in output, output
    assert "use -P prefork (the default, one process per pump) or -P threads" in output
    assert "celery@" not in output and "ready" not in output, output  # it never started
    # gevent itself (not installed here; its pool module imports without it): named as such.
    check = (
        "from tasks.app import refuse_green_pool\n"
        "for pool in ('prefork', 'threads', 'solo'):\n"
        "    refuse_green_pool(pool)\n"
        "refuse_green_pool('gevent')\n"
    )
    gevent = subprocess.run(
        [sys.executable, "-c", check], env=env, cwd=ROOT, capture_output=True, text=True
    )
    assert gevent.returncode == 1, gevent.stderr
    assert gevent.stderr.startswith("relay: the Celery pool gevent runs tasks as greenlets")
