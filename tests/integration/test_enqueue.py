"""enqueue() against a real Redis: one write, all-or-nothing batches, async, no heavy imports
(settings errors: tests/unit/test_settings.py)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import relay
from relay.enqueue import Enqueuer
from relay.keys import Keys
from relay.settings import Settings
from tests.support.services import DATALOOK_KEY, SERVOKI_KEY


@pytest.fixture
def enqueuer(redis_url: str) -> Iterator[Enqueuer]:
    settings = Settings(
        redis_url=redis_url,
        namespace="enq-" + Path(redis_url).name,
        servoki_api_key=SERVOKI_KEY,
        servoki_site="example.com",
        datalook_api_key=DATALOOK_KEY,
        datalook_url="https://dl.example.com",
    )
    client = relay.configure(settings)
    client._redis.delete(client.keys.queue)
    yield client
    client._redis.delete(client.keys.queue)


def queued(client: Enqueuer) -> list[dict[str, object]]:
    return [json.loads(item) for item in client._redis.lrange(client.keys.queue, 0, -1)]


def rpush_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_rpush", {})
    return int(stats.get("calls", 0))


def test_enqueue_writes_one_item(enqueuer: Enqueuer) -> None:
    event_id = relay.enqueue("servoki", {"event_type": "purchase", "value": 49.9})
    [item] = queued(enqueuer)
    assert item["d"] == "servoki" and item["id"] == event_id
    assert item["p"]["event_id"] == event_id  # type: ignore[index]


def test_enqueue_many_is_one_round_trip(enqueuer: Enqueuer) -> None:
    before = rpush_calls(enqueuer._redis)
    ids = relay.enqueue_many(
        "datalook", [{"event_name": "click", "page_path": f"/{i}"} for i in range(50)]
    )
    assert rpush_calls(enqueuer._redis) == before + 1
    assert [item["id"] for item in queued(enqueuer)] == ids
    assert len(set(ids)) == 50


def test_invalid_event_writes_nothing(enqueuer: Enqueuer) -> None:
    with pytest.raises(relay.InvalidEvent):
        relay.enqueue("servoki", {"event_type": "p", "currency": "euro"})
    good = {"event_name": "click", "page_path": "/"}
    with pytest.raises(relay.InvalidEvent, match=r"^item 1: datalook\.page_path"):
        relay.enqueue_many("datalook", [good, {"event_name": "click"}, good])
    assert queued(enqueuer) == []


def test_a_lone_surrogate_is_invalid_not_a_crash(enqueuer: Enqueuer) -> None:
    with pytest.raises(relay.InvalidEvent) as info:
        relay.enqueue("servoki", {"event_type": "buy\ud800now"})
    assert str(info.value).startswith(
        "servoki.event_type must be a non-empty string of valid Unicode (no lone surrogate"
    )
    assert "buy" in str(info.value)  # where in the event it is
    assert queued(enqueuer) == []


def test_aenqueue(enqueuer: Enqueuer) -> None:
    async def handler() -> list[str]:
        ids = [
            await relay.aenqueue("servoki", {"event_type": "signup"}, event_id="u-1"),
            await relay.aenqueue("datalook", {"event_name": "pageview", "page_path": "/"}),
        ]
        await enqueuer.aclose()
        return ids

    ids = asyncio.run(handler())
    assert ids[0] == "u-1"
    assert [item["id"] for item in queued(enqueuer)] == ids


def test_import_and_enqueue_load_no_celery_sqlalchemy_or_httpx(redis_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, relay
        relay.configure(redis_url={redis_url!r}, namespace="weight",
                        servoki_api_key={SERVOKI_KEY!r}, servoki_site="example.com")
        relay.enqueue("servoki", {{"event_type": "purchase"}})
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"celery", "sqlalchemy", "httpx", "kombu", "alembic"}})
        print(",".join(heavy) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "none"


def test_embedded_redis_is_found_by_enqueue_in_another_process(tmp_path: Path) -> None:
    from relay.queue import embedded

    home = tmp_path / "home"
    embedded.ensure_running(home)
    try:
        script = textwrap.dedent(
            f"""
            import relay
            relay.configure(home={str(home)!r}, servoki_api_key={SERVOKI_KEY!r},
                            servoki_site="example.com")
            print(relay.enqueue("servoki", {{"event_type": "purchase"}}, event_id="e-1"))
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        client = redis.Redis(unix_socket_path=str(home / "redis.sock"))
        [item] = client.lrange(Keys().queue, 0, -1)
        assert json.loads(item)["id"] == "e-1"
        client.close()
    finally:
        embedded.stop(home)
