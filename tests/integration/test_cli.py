"""The relay command as a user runs it: real processes, real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.settings import Settings
from tests.support.services import DATALOOK_KEY, SECRETS, SERVOKI_KEY, Postgres, relay_env

ROOT = Path(__file__).resolve().parents[2]


def run_relay(
    *args: str, env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_db_upgrade_on_postgres(postgres: Postgres, tmp_path: Path) -> None:
    url = postgres.fresh(migrated=False)
    env = {**os.environ, "RELAY_DATABASE_URL": url}
    result = run_relay("db", "upgrade", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "is at the newest schema" in result.stdout
    engine = make_engine(url)
    tables = inspect(engine)
    assert "relay_outbox" in tables.get_table_names()
    assert {ix["name"] for ix in tables.get_indexes("relay_outbox")} >= {
        "ix_relay_outbox_pending_due",
        "ix_relay_outbox_status_destination",
    }
    engine.dispose()


def test_flush_exit_codes(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    settings = make_settings()
    env = relay_env(settings)
    enqueuer = Enqueuer(settings)
    enqueuer.push(enqueuer.encode_many("servoki", [{"event_type": "purchase"}] * 3)[1])
    result = run_relay("flush", "--json", env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["delivered"] == 3 and report["dead"] == 0

    enqueuer.push([enqueuer.encode("servoki", {"event_type": "p", "site": "nope.example"})[1]])
    result = run_relay("flush", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "1 event(s) ended dead" in result.stderr

    sandbox.revoke(DATALOOK_KEY)
    enqueuer.push([enqueuer.encode("datalook", {"event_name": "click", "page_path": "/"})[1]])
    result = run_relay("flush", "--max-wait", "0", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "destination datalook is paused (HTTP 401" in result.stderr
    for secret in SECRETS:
        assert secret not in result.stdout + result.stderr
    enqueuer.close()


def test_bad_settings_are_one_clear_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_DATALOOK_API_KEY"] = DATALOOK_KEY
    result = run_relay("flush", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: RELAY_DATALOOK_URL is required when RELAY_DATALOOK_API_KEY is set: DataLook "
        "hosts are per account; copy the base URL from the DataLook dashboard"
    )


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The newcomer's path: `relay demo`, then `relay status` and the dead list, same directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["COLUMNS"] = "120"
    previous = os.umask(0o022)  # the usual login umask: the demo's files must stay private
    try:
        result = run_relay("demo", env=env, cwd=tmp_path, timeout=240)
    finally:
        os.umask(previous)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "InvalidEvent: servoki.currency must be a 3-letter ISO 4217 code" in out
    assert "relay demo: what the outbox says" in out
    servoki_row = next(line for line in out.splitlines() if line.startswith("│ servoki"))
    cells = [c.strip() for c in servoki_row.strip("│").split("│")]
    assert cells[1:4] == ["196", "15", "180"] and cells[4].startswith("1 (HTTP 404")
    assert cells[5] == "180"
    assert "relay status" in out and "relay outbox list --status dead" in out
    home = tmp_path / ".relay"
    assert not (home / "redis.sock").exists()  # the demo stopped its Redis
    shared = [p for p in [home, *home.rglob("*")] if p.lstat().st_mode & 0o077]
    assert shared == [], [(str(p), oct(p.lstat().st_mode)) for p in shared]

    try:
        result = run_relay("status", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        servoki, datalook = (report["destinations"][name] for name in ("servoki", "datalook"))
        assert (servoki["delivered"], servoki["dead"], servoki["pending"]) == (180, 1, 0)
        assert servoki["dead_reasons"] == {"HTTP 404": 1}
        assert (datalook["delivered"], datalook["dead"], datalook["pending"]) == (120, 0, 0)
        assert report["queue"] == 0

        result = run_relay("outbox", "list", "--status", "dead", "--json", env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        [dead] = json.loads(result.stdout)
        assert dead["destination"] == "servoki" and dead["last_status"] == 404
        assert dead["event_id"].startswith("demo-") and dead["event_id"].endswith("-order_lost")
    finally:
        run_relay("redis", "stop", env=env, cwd=tmp_path)  # `relay status` started it


def test_demo_refuses_a_home_where_real_events_wait(tmp_path: Path) -> None:
    """The demo's worker would send them to the sandbox: the demo stops before it starts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    assert run_relay("db", "upgrade", env=env, cwd=tmp_path).returncode == 0
    home = tmp_path / ".relay"
    client = Enqueuer(Settings(home=home, servoki_api_key=SERVOKI_KEY, servoki_site="a.com"))
    client.push([client.encode("servoki", {"event_type": "purchase"}, "order_1")[1]])
    client.close()  # the embedded Redis is not running: the event is in the outbox, pending

    result = run_relay("demo", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert f"error: the relay at {home} is in use (1 pending event(s) in its outbox)" in (
        result.stderr
    )
    assert "RELAY_HOME=/tmp/relay-demo relay demo" in result.stderr
    assert not (home / "redis.sock").exists()  # the Redis it started for the check is stopped
    engine = make_engine(Settings(home=home).resolved_database_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT event_id, status FROM relay_outbox")).all() == [
            ("order_1", "pending")
        ]
    engine.dispose()
