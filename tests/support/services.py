"""The real services the suite runs against, and what a relay process needs to share them.

Fixtures live in ``tests/conftest.py``; these are the plain helpers tests import.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import redis

from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.queue.embedded import find_redis_server
from relay.settings import Settings

SERVOKI_KEY = "servoki_testkey0123456789"
DATALOOK_KEY = "dl_live_k1test_s3cr3tvalue"
SECRETS = (SERVOKI_KEY, DATALOOK_KEY, "s3cr3tvalue", "testkey0123456789")
# A DataLook key whose secret holds an underscore: dl_live_<key_id>_<secret>.
UNDERSCORE_KEY = "dl_live_k7prod_s3cr3t_with_underscore"
UNDERSCORE_SECRET = "s3cr3t_with_underscore"
UNMETERED = "100000/1s"
ROOT = Path(__file__).resolve().parents[2]


def relay_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a relay process (worker, CLI, Celery) that shares ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RELAY_HOME=str(settings.home),
        RELAY_NAMESPACE=settings.namespace,
        RELAY_REDIS_URL=settings.resolved_redis_url,
        RELAY_DATABASE_URL=settings.resolved_database_url,
        RELAY_SERVOKI_API_KEY=SERVOKI_KEY,
        RELAY_SERVOKI_URL=settings.servoki_url,
        RELAY_SERVOKI_SITE="example.com",
        RELAY_DATALOOK_API_KEY=DATALOOK_KEY,
        RELAY_DATALOOK_URL=settings.datalook_url or "",
        RELAY_SERVOKI_RATE_LIMIT=settings.servoki_rate_limit,
        RELAY_DATALOOK_RATE_LIMIT=settings.datalook_rate_limit,
    )
    for name in (
        "backoff_base", "backoff_cap", "heartbeat_seconds", "lease_seconds", "pump_seconds",
        "send_concurrency", "max_attempts", "pause_probe_seconds", "connect_timeout",
        "read_timeout",
    ):  # fmt: skip
        env[f"RELAY_{name.upper()}"] = str(getattr(settings, name))
    env.update(extra)
    return env


class RedisServer:
    """A redis-server child process on a unix socket (and optionally a TCP port)."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.appendonly = appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> RedisServer:
        args = [find_redis_server(), "--port", "0", "--unixsocket", str(self.socket)]
        args += ["--dir", str(self.directory), "--save", "", "--daemonize", "no"]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        args += ["--maxmemory-policy", "noeviction", "--logfile", str(self.directory / "log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client = redis.Redis(unix_socket_path=str(self.socket))
                client.ping()
                client.close()
                return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'log'}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        self.proc.wait(10)
        self.proc = None


class Postgres:
    """A PostgreSQL server (pgserver) with a migrated template database."""

    def __init__(self, directory: Path) -> None:
        import pgserver

        self.directory = directory
        self.server = pgserver.get_server(str(directory), cleanup_mode="stop")
        self.server.psql("CREATE DATABASE relay_template;")
        engine = make_engine(self.url("relay_template"))
        upgrade(engine)
        engine.dispose()

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.directory}"

    def restart(self) -> None:
        """Stop the server (fast: open transactions are aborted) and start it again."""
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", "-m", "fast", "restart"], pgdata=self.directory, user=self.server.system_user)

    def fresh(self, *, migrated: bool = True) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = "relay_template" if migrated else "template0"
        self.server.psql(f"CREATE DATABASE {name} TEMPLATE {template};")
        return self.url(name)
