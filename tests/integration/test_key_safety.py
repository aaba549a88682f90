"""Keys and passwords stay secret where real processes print them: the CLI masks a secret with
underscores and the passwords of services it cannot reach; an API that echoes the key back gets
it neither stored nor logged. (The rules themselves, without servers: tests/unit/
test_destination_config.py, test_redaction.py, test_redis_scripts.py.) Also the reaper, on a
real Redis.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
import redis
from sqlalchemy import select

from relay.keys import Keys
from relay.outbox.schema import attempts, outbox
from relay.queue.consumer import Queue
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.apis import Misbehaving
from tests.support.pipeline import enqueue, purchases
from tests.support.services import (
    ROOT,
    SECRETS,
    UNDERSCORE_KEY,
    UNDERSCORE_SECRET,
    relay_env,
)

# -- the CLI shows no key and no password ----------------------------------------------------


def test_cli_output_masks_a_secret_with_underscores(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(datalook_api_key=UNDERSCORE_KEY)
    env = relay_env(settings, RELAY_DATALOOK_API_KEY=UNDERSCORE_KEY)
    reason = f"rotating, old secret {UNDERSCORE_SECRET}"
    paused = run_relay(env, "destinations", "pause", "datalook", "--reason", reason, "--json")
    assert paused.returncode == 0, paused.stderr
    shown = run_relay(env, "status")
    assert shown.returncode == 0, shown.stderr
    as_json = run_relay(env, "status", "--json")
    assert json.loads(as_json.stdout)["destinations"]["datalook"]["paused_reason"] == (
        "rotating, old secret ***"
    )
    for result in (paused, shown, as_json):
        output = result.stdout + result.stderr
        assert UNDERSCORE_SECRET not in output and UNDERSCORE_KEY not in output
        assert "old secret ***" in output


def run_relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_shows_no_password_of_unreachable_services(
    make_settings: Callable[..., Settings],
) -> None:
    redis_url = "redis://:hunter2user@127.0.0.1:9/0?password=hunter2query"
    env = relay_env(make_settings(), RELAY_REDIS_URL=redis_url)
    results = [run_relay(env, "status"), run_relay(env, "health")]
    assert results[0].stderr.startswith(
        "error: Redis at redis://***@127.0.0.1:9/0?password=*** does not answer:"
    ), results[0].stderr
    database_url = (
        "postgresql+psycopg://relay:hunter2user@127.0.0.1:9/relay"
        "?connect_timeout=2&sslpassword=hunter2ssl&password=hunter2query"
    )
    env = relay_env(make_settings(), RELAY_DATABASE_URL=database_url)
    results += [
        run_relay(env, "status"),
        run_relay(env, "health", "--no-workers"),
        run_relay(env, "db", "upgrade"),
    ]
    assert results[2].stderr.startswith(
        "error: the outbox database at postgresql+psycopg://relay:***@127.0.0.1:9/relay"
        "?connect_timeout=2&sslpassword=***&password=*** does not answer: OperationalError"
    ), results[2].stderr
    assert [r.returncode for r in results] == [2, 1, 2, 1, 1]
    for result in results:
        output = result.stdout + result.stderr
        for secret in ("hunter2user", "hunter2query", "hunter2ssl", *SECRETS):
            assert secret not in output, (secret, output)
        assert "Traceback" not in output


# -- the reaper ------------------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def items(count: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"v": 1, "d": "servoki", "id": f"e{i}", "t": time.time(), "p": {}}).encode()
        for i in range(start, start + count)
    ]


def test_reaper_returns_a_dead_consumers_batch_in_order_and_leaves_the_living(
    client: redis.Redis,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    known = frozenset({"servoki"})
    client.rpush(keys.queue, *items(7))
    dead = Queue(client, keys, heartbeat_seconds=0.2, known_destinations=known)
    alive = Queue(client, keys, heartbeat_seconds=30, known_destinations=known)
    assert [e.event_id for e in dead.take(3).events] == ["e0", "e1", "e2"]
    assert [e.event_id for e in alive.take(2).events] == ["e3", "e4"]
    time.sleep(0.3)  # the dead consumer's heartbeat expires
    assert alive.reap() == 3
    queued = [json.loads(i)["id"] for i in client.lrange(keys.queue, 0, -1)]
    assert queued == ["e0", "e1", "e2", "e5", "e6"]  # back at the head, in their order
    assert [json.loads(i)["id"] for i in client.lrange(alive.processing, 0, -1)] == ["e3", "e4"]
    assert not client.exists(dead.processing)
    assert client.smembers(keys.consumers) == {alive.consumer.encode()}
    assert alive.reap() == 0


def test_reaper_leaves_a_consumer_that_beat_again(client: redis.Redis) -> None:
    """The heartbeat is checked again inside the script: a consumer that beat between the
    reaper's look and its move keeps its batch."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    client.rpush(keys.queue, *items(2))
    slow = Queue(client, keys, heartbeat_seconds=0.2, known_destinations=frozenset({"servoki"}))
    slow.take(2)
    time.sleep(0.3)
    reaper = Queue(client, keys)
    dead = reaper.dead_consumers()
    assert dead == [slow.consumer.encode()]
    slow.beat(30)  # alive again before the move
    assert reaper.return_batch(dead[0]) is None
    assert client.llen(slow.processing) == 2 and client.llen(keys.queue) == 0
    assert client.sismember(keys.consumers, slow.consumer)


# -- an API that echoes the key ----------------------------------------------------------------


def test_a_key_echoed_in_a_response_is_never_stored_or_logged(
    make_settings: Callable[..., Settings],
    misbehaving: tuple[str, type[Misbehaving]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, handler = misbehaving
    handler.mode = "echo"
    settings = make_settings(servoki_url=url, datalook_url=url)
    enqueue(settings, "servoki", purchases(1))
    enqueue(settings, "datalook", [{"event_name": "pageview", "page_path": "/"}])
    worker = Worker(settings)
    try:
        with caplog.at_level(logging.DEBUG):
            assert worker.flush(max_wait=5).exit_code == 1
        with worker.engine.connect() as conn:
            stored = [str(row) for row in conn.execute(select(outbox))]
            stored += [str(row) for row in conn.execute(select(attempts))]
    finally:
        worker.close()
    assert len(handler.seen) == 2
    text = "\n".join(stored) + caplog.text
    assert "Authorization: Bearer ***" in text
    for secret in SECRETS:
        assert secret not in text
