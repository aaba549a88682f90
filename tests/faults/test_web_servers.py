"""The example apps under real servers and real forks: gunicorn (--preload, 4 workers, sync and
gthread, workers recycled by --max-requests) and uvicorn (2 workers).

A few thousand concurrent requests each enqueue one event; a worker then delivers, and the
sandbox counts: every event arrives exactly once, none is lost when a gunicorn worker is
recycled, and the preloaded master opens no Redis connection that its forks would share.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis

from relay.dev.sandbox import SandboxProcess
from relay.outbox.engine import make_engine
from relay.outbox.migrate import ensure_current
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.faults import stop, wait_for
from tests.support.services import ROOT, relay_env

pytestmark = pytest.mark.slow

REQUESTS = 2000
CLIENTS = 32

SERVERS = {
    # name: (command after `python -m`, the app)
    "gunicorn-sync": (
        ["gunicorn", "--preload", "-w", "4", "-k", "sync"],
        "examples.flask_app:app",
    ),
    "gunicorn-gthread": (
        ["gunicorn", "--preload", "-w", "4", "-k", "gthread", "--threads", "4"],
        "examples.flask_app:app",
    ),
    "uvicorn": (["uvicorn", "--workers", "2", "--no-access-log"], "examples.fastapi_app:app"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def app_connections(client: redis.Redis) -> int:
    """Clients connected to Redis other than this test's own connection."""
    own = client.client_id()
    return sum(1 for entry in client.client_list() if int(entry["id"]) != own)


def start(name: str, settings: Settings, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command, app = SERVERS[name]
    port = free_port()
    if name.startswith("gunicorn"):
        # Workers are recycled mid-run: an event must never be lost with its worker.
        command = [*command, "--max-requests", "150", "--max-requests-jitter", "50"]
        command += ["--graceful-timeout", "10", "-b", f"127.0.0.1:{port}", app]
    else:
        command = [*command, "--host", "127.0.0.1", "--port", str(port), app]
    with log.open("wb") as output:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=relay_env(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.post(
                f"{url}/ping", json={"id": "up", "value": 1, "currency": "EUR"}
            ).is_success
        except httpx.TransportError:
            return False

    assert wait_for(up, timeout=30), log.read_text()
    return proc, url


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(lease_seconds=30.0)


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.resolved_redis_url)
    yield client
    client.close()


@pytest.mark.parametrize("server", list(SERVERS))
def test_every_request_s_event_is_delivered_once_under_real_servers(
    server: str,
    settings: Settings,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # The outbox exists, as where workers run: a push that times out on a busy host falls back
    # to it (and a copy Redis did take is deduplicated there).
    engine = make_engine(settings.resolved_database_url)
    ensure_current(engine, settings.resolved_database_url)
    engine.dispose()
    before = app_connections(redis_client)
    proc, url = start(server, settings, tmp_path / "server.log")
    try:
        # Preloaded (gunicorn) or not, the app holds no Redis connection before a request:
        # nothing is opened before the fork for the workers to share.
        assert app_connections(redis_client) == before

        local = threading.local()
        clients: list[httpx.Client] = []

        def pay(i: int) -> str:
            if not hasattr(local, "client"):  # one keep-alive client per load thread
                local.client = httpx.Client(base_url=url, timeout=30)
                clients.append(local.client)
            order = {"id": f"{server}-{i}", "value": 10.0, "currency": "EUR"}
            answer = local.client.post("/pay", json=order)
            assert answer.status_code == 200, answer.text
            event_id: str = answer.json()["event_id"]
            return event_id

        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                ids = list(pool.map(pay, range(REQUESTS)))
        finally:
            for client in clients:
                client.close()
    finally:
        assert stop(proc) == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert sorted(ids) == sorted(f"order_{server}-{i}" for i in range(REQUESTS))
    log = (tmp_path / "server.log").read_text()
    if server.startswith("gunicorn"):
        assert "Autorestarting worker" in log  # --max-requests recycled workers during the run

    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=60)
    finally:
        worker.close()
    assert report.exit_code == 0
    arrived = Counter(e["body"]["event_id"] for e in sandbox.events("servoki"))
    assert set(arrived) == set(ids)  # none lost, not even with a recycled worker
    assert max(arrived.values()) == 1  # none twice
    assert sandbox.stats()["servoki"]["requests"] == REQUESTS  # not even dropped as a resend
