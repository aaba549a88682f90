"""`relay status`, `relay health` and `relay destinations`, and the errors of every command."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.cli_state import State, build
from tests.support.services import DATALOOK_KEY, ROOT, SECRETS


@pytest.fixture
def state(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> Iterator[State]:
    yield build(make_settings(), sandbox)
    sandbox.unrevoke(DATALOOK_KEY)


def test_status_json_and_table(state: State, caplog: pytest.LogCaptureFixture) -> None:
    enqueuer = Enqueuer(state.settings)
    enqueuer.push([b"not json"])
    state.flush(max_wait=0)  # quarantines the poison item
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "signup"})[1] for _ in range(3)])
    enqueuer.close()

    report = state.json("status")
    assert report["queue"] == 3
    assert report["quarantine"]["length"] == 1 and report["quarantine"]["total"] == 1
    assert report["quarantine"]["recent"][0]["reason"].startswith("not JSON")
    servoki, datalook = report["destinations"]["servoki"], report["destinations"]["datalook"]
    assert {k: servoki[k] for k in ("queued", "pending", "delivered", "dead", "paused")} == {
        "queued": 3, "pending": 0, "delivered": 4, "dead": 2, "paused": False,
    }  # fmt: skip
    assert servoki["dead_reasons"] == {"HTTP 404": 2}
    assert servoki["limit"] == "100000/1s" and servoki["rate_per_second"] > 0
    assert servoki["drain_seconds"] is not None and servoki["oldest_pending_age"] is None
    assert {k: datalook[k] for k in ("queued", "pending", "delivered", "dead", "paused")} == {
        "queued": 0, "pending": 2, "delivered": 3, "dead": 1, "paused": True,
    }  # fmt: skip
    assert datalook["dead_reasons"] == {"HTTP 400": 1}
    assert datalook["paused_reason"] == "HTTP 401: the API refused the key"
    assert datalook["paused_by"] == "relay" and datalook["drain_seconds"] is None
    assert datalook["oldest_pending_age"] >= 0
    assert report["workers"] == {"alive": 0, "newest_heartbeat_age": None}

    text = state.cli("status").stdout
    assert "PAUSED" in text and "servoki dead: HTTP 404: 2" in text
    assert "datalook paused by relay 0s ago" in text and "HTTP 401: the API refused the key" in text
    assert "queue: 3 event(s) in Redis" in text and "quarantine: 1 item(s)" in text

    # The delivery log: one line per outcome naming the event and destination, never the key
    # or the payload.
    caplog.set_level(logging.INFO, logger="relay.delivery")
    state.flush(max_wait=0)
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.delivery"]
    delivered = [line for line in lines if line.startswith("delivered ")]
    assert len(delivered) == 3 and all("destination=servoki" in line for line in delivered)
    assert all("event_id=" in line and "destination=" in line for line in lines)
    assert not any(s in line for s in SECRETS for line in lines)
    assert not any("signup" in line for line in lines)


def test_pause_and_resume(state: State, sandbox: SandboxProcess) -> None:
    paused = state.json("destinations", "pause", "servoki", "--reason", "rotating the key")
    assert paused == {"destination": "servoki", "paused": True, "reason": "rotating the key"}
    servoki = state.json("status")["destinations"]["servoki"]
    assert servoki["paused"] and servoki["paused_reason"] == "rotating the key"
    assert servoki["paused_by"] == "operator"
    enqueuer = Enqueuer(state.settings)
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "signup"}, "held-1")[1]])
    enqueuer.close()
    state.flush(max_wait=0)
    assert state.json("outbox", "show", "held-1")["status"] == "pending"  # no probe either
    assert "servoki resumed" in state.cli("destinations", "resume", "servoki").stdout
    assert "servoki was not paused" in state.cli("destinations", "resume", "servoki").stdout

    # The key was rotated (here: accepted again); resuming sends what waited.
    sandbox.unrevoke(DATALOOK_KEY)
    assert state.json("destinations", "resume", "datalook")["was_paused"] is True
    state.flush(max_wait=0)
    assert state.json("outbox", "show", "held-1")["status"] == "delivered"
    assert {
        r["status"] for r in state.json("outbox", "list", "-d", "datalook", "-s", "pending")
    } == set()
    result = state.cli("destinations", "pause", "nope", code=2)
    assert "unknown destination 'nope'" in result.stderr


def test_health(state: State) -> None:
    result = state.cli("health", code=1)
    assert result.stderr.startswith("unhealthy: no worker heartbeat")
    assert state.cli("health", "--no-workers").stdout.startswith("ok:")
    worker = Worker(state.settings)
    worker.pump(0.05)
    worker.close()  # a clean exit takes its heartbeat away; a killed worker leaves it
    assert state.cli("health", code=1)
    worker = Worker(state.settings)
    worker.pump(0.05)
    assert state.json("health") == {"ok": True, "reason": None}
    time.sleep(0.3)
    stale = state.cli("health", "--max-age", "0.2", code=1)
    assert "s old (limit 0.2s): workers are down or not woken" in stale.stderr
    worker.close()


def run_relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unreachable_redis_and_database_are_named_without_credentials(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    from tests.support.services import relay_env

    env = relay_env(make_settings(), RELAY_REDIS_URL="redis://:hunter2pw@127.0.0.1:9/0")
    result = run_relay(env, "status")
    assert result.returncode == 2
    assert result.stderr.startswith("error: Redis at redis://***@127.0.0.1:9/0 does not answer:")
    health = run_relay(env, "health")
    assert health.returncode == 1
    assert health.stderr.startswith("unhealthy: Redis at redis://***@127.0.0.1:9/0 does not answer")

    db = "postgresql+psycopg://relay:hunter2pw@127.0.0.1:9/relay?connect_timeout=2"
    env = relay_env(make_settings(), RELAY_DATABASE_URL=db)
    result = run_relay(env, "outbox", "list")
    assert result.returncode == 2
    assert result.stderr.startswith(
        "error: the outbox database at postgresql+psycopg://relay:***@127.0.0.1:9/relay"
    )
    assert "does not answer: OperationalError" in result.stderr
    assert run_relay(env, "health", "--no-workers").returncode == 1
    for out in (result, health):
        assert "hunter2pw" not in out.stdout + out.stderr
        assert not any(s in out.stdout + out.stderr for s in SECRETS)
    assert "Traceback" not in result.stderr
    assert os.environ.get("RELAY_REDIS_URL") is None
