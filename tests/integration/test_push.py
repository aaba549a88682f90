"""The queue's one write (relay/queue/push.py) against a real Redis: what redis-py's client did
for enqueue(), on fewer steps: idle connections reused, a closed one replaced once, a timeout
or an error reply leaving no half-read connection behind, threads and forks kept apart."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.queue.push import ListPusher
from tests.support.services import RedisServer

TIMEOUTS = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry": Retry(NoBackoff(), 0)}


@pytest.fixture
def key() -> str:
    return f"t{uuid.uuid4().hex[:10]}:queue"


@pytest.fixture
def pusher(redis_url: str, key: str) -> Iterator[ListPusher]:
    made = ListPusher(redis_url, key, **TIMEOUTS)
    yield made
    made.close()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


def rpush_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_rpush", {}).get("calls", 0))


def test_one_rpush_of_the_bytes_as_given(
    pusher: ListPusher, redis_client: redis.Redis, key: str
) -> None:
    odd = [b"", b"\r\n$3\r\nabc\r\n", bytes(range(256)), b"x" * 100_000]
    before = rpush_calls(redis_client)
    assert pusher.push([b'{"a":1}']) == 1
    assert pusher.push(odd) == 5
    assert rpush_calls(redis_client) == before + 2
    assert redis_client.lrange(key, 0, -1) == [b'{"a":1}', *odd]
    assert len(pusher._idle) == 1  # one connection, reused
    redis_client.delete(key)


def test_the_packed_command_is_what_redis_py_sends(pusher: ListPusher, key: str) -> None:
    from redis.connection import Connection

    items = [b"a", b"", b"\xff" * 7000]
    assert b"".join(pusher.pack(items)) == b"".join(Connection().pack_command("RPUSH", key, *items))


def test_a_connection_the_server_closed_is_replaced_once(own_redis: RedisServer, key: str) -> None:
    pusher = ListPusher(own_redis.url, key, **TIMEOUTS)
    client = redis.Redis.from_url(own_redis.url)
    try:
        pusher.push([b"1"])
        client.client_kill_filter(_type="normal", skipme=True)  # the pusher's idle connection
        assert pusher.push([b"2"]) == 2
        own_redis.stop()  # a restart: every connection gone
        own_redis.start()
        client = redis.Redis.from_url(own_redis.url)
        assert pusher.push([b"3"]) == 1  # no persistence in the test server
        assert client.lrange(key, 0, -1) == [b"3"]
    finally:
        pusher.close()
        client.close()


def test_redis_down_raises_a_redis_error(tmp_path: Path, key: str) -> None:
    pusher = ListPusher(f"unix://{tmp_path / 'nothing.sock'}", key, **TIMEOUTS)
    with pytest.raises(redis.ConnectionError):
        pusher.push([b"x"])
    assert pusher._idle == []


def test_a_silent_server_times_out_and_its_connection_is_dropped(key: str) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts, never answers (not even the handshake)
    pusher = ListPusher(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", key, **TIMEOUTS)
    try:
        started = time.monotonic()
        with pytest.raises(redis.TimeoutError):
            pusher.push([b"x"])
        assert time.monotonic() - started < 2 * TIMEOUTS["socket_timeout"]  # type: ignore[operator]
        assert pusher._idle == []  # never reused: its reply could still arrive
    finally:
        silent.close()


def test_an_error_reply_keeps_the_connection(own_redis: RedisServer, key: str) -> None:
    client = redis.Redis.from_url(own_redis.url)
    pusher = ListPusher(own_redis.url, key, **TIMEOUTS)
    try:
        pusher.push([b"first"])
        client.config_set("maxmemory", 1)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            pusher.push([b"x" * 1000])
        [connection] = pusher._idle  # the whole error reply was read: still clean
        client.config_set("maxmemory", 0)
        assert pusher.push([b"second"]) == 2
        assert pusher._idle == [connection]
        assert client.lrange(key, 0, -1) == [b"first", b"second"]
    finally:
        pusher.close()
        client.close()


def test_threads_never_share_a_connection(
    pusher: ListPusher, redis_client: redis.Redis, key: str
) -> None:
    def push_many(thread: int) -> None:
        for i in range(200):
            pusher.push([f"{thread}-{i}".encode()])

    threads = [threading.Thread(target=push_many, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    items = redis_client.lrange(key, 0, -1)
    assert sorted(items) == sorted(f"{t}-{i}".encode() for t in range(8) for i in range(200))
    assert 1 <= len(pusher._idle) <= 8
    redis_client.delete(key)


def test_a_forked_child_opens_its_own_connection(
    pusher: ListPusher, redis_client: redis.Redis, key: str
) -> None:
    pusher.push([b"parent"])
    [inherited] = pusher._idle
    pid = os.fork()
    if pid == 0:  # the child: exits with 0 only if it wrote on a connection of its own
        try:
            pusher.push([b"child"])
            os._exit(0 if len(pusher._idle) == 1 and pusher._idle[0] is not inherited else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert pusher.push([b"parent again"]) == 3
    assert pusher._idle == [inherited]
    assert redis_client.lrange(key, 0, -1) == [b"parent", b"child", b"parent again"]
    redis_client.delete(key)


def test_enqueue_after_a_redis_restart_goes_to_redis_not_the_fallback(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """enqueue()'s stale connection is replaced on the spot, as redis-py's pool did: the event
    is queued in Redis; the outbox fallback (here a database that is down) is not needed."""
    import relay
    from relay.settings import Settings
    from tests.support.services import SERVOKI_KEY

    enqueuer = relay.configure(
        Settings(
            redis_url=own_redis.url,
            database_url="postgresql+psycopg://relay@127.0.0.1:9/relay",
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
        )
    )
    try:
        relay.enqueue("servoki", {"event_type": "purchase"}, event_id="before")
        own_redis.stop()  # a restart while the enqueuer's connection sits idle
        own_redis.start()
        relay.enqueue("servoki", {"event_type": "purchase"}, event_id="after")
        client = redis.Redis.from_url(own_redis.url)
        [item] = client.lrange(enqueuer.keys.queue, 0, -1)  # the test server keeps no data
        assert b'"id":"after"' in item
        client.close()
        own_redis.stop()
        with pytest.raises(relay.RelayUnavailable):  # down: Redis and the outbox both refuse
            relay.enqueue("servoki", {"event_type": "purchase"}, event_id="down")
    finally:
        enqueuer.close()


def test_redis_down_costs_no_package_metadata_lookup_per_call(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While Redis is down every enqueue() opens a new connection; redis-py would read its own
    version from the package metadata for each (0.7 ms, most of a fallback's cost). The pusher
    reads it once; its connections still tell Redis who they are (CLIENT SETINFO)."""
    import importlib.metadata

    pusher = ListPusher(f"unix://{tmp_path / 'nobody.sock'}", key, **TIMEOUTS)
    lookups: list[str] = []
    real_version = importlib.metadata.version

    def counted(name: str) -> str:
        lookups.append(name)
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    for _ in range(5):
        with pytest.raises(redis.ConnectionError):
            pusher.push([b"x"])
    assert lookups == []
    info = pusher._connection_kwargs.get("driver_info")
    assert info is not None and info.lib_version == real_version("redis")
