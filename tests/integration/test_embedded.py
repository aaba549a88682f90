"""The embedded relay's files: created by the real code paths, readable by their owner only."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from relay.ops.admin import Admin
from relay.queue import embedded
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.services import SERVOKI_KEY


@pytest.fixture
def common_umask() -> Iterator[None]:
    """The usual login umask (022): without care, new files are world-readable."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def modes(root: Path) -> dict[str, str]:
    """Path (relative to ``root``) → permission bits, for ``root`` and everything under it."""
    found = {".": oct(stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = oct(stat.S_IMODE(path.lstat().st_mode))
    return found


def shared(found: dict[str, str]) -> dict[str, str]:
    """The entries that group or others may read, write or enter."""
    return {name: mode for name, mode in found.items() if int(mode, 8) & 0o077}


def test_a_worker_on_embedded_defaults_keeps_its_files_private(
    common_umask: None, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    settings = Settings(home=home, servoki_api_key=SERVOKI_KEY, servoki_site="example.com")
    worker = Worker(settings)  # starts the embedded Redis, creates and migrates the outbox
    try:
        client = redis.Redis(unix_socket_path=str(settings.redis_socket))
        client.rpush(worker.keys.queue, b"x")  # something in the AOF
        client.close()
        worker.outbox.counts()  # an open connection: the -shm file exists
        found = modes(home)
        assert {"redis.sock", "redis.conf", "redis.log", "redis.pid", "outbox.db"} <= set(found)
        assert any("aof" in name for name in found), found  # appendonly.aof or appendonlydir
        assert any(name.endswith("-wal") for name in found), found
        assert shared(found) == {}, found
        assert found["."] == "0o700"
    finally:
        worker.close()
        embedded.stop(home)


def test_an_operator_command_creates_a_private_outbox(common_umask: None, tmp_path: Path) -> None:
    """A configured SQLite outbox in a directory that does not exist yet (Admin migrates it)."""
    url = f"sqlite:///{tmp_path / 'data' / 'relay' / 'outbox.db'}"
    admin = Admin(Settings(home=tmp_path / "home", database_url=url), start_embedded=False)
    try:
        admin.counts()
        found = modes(tmp_path / "data" / "relay")
        assert {"outbox.db", "outbox.db-wal", "outbox.db-shm"} <= set(found)
        assert shared(found) == {}, found
    finally:
        admin.close()
