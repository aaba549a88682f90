"""The unit tests start no server and no process: this guard fails a test that tries.

A test here that asks for a server fixture fails before the fixture starts; one that starts a
process (a redis-server, PostgreSQL, the sandbox, the relay CLI, a multiprocessing child) fails
at the call. A test that needs one belongs in tests/integration.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, NoReturn

import pytest

SERVER_FIXTURES = frozenset(
    {
        "redis_server",
        "redis_url",
        "redis_client",
        "postgres",
        "db_url",
        "sandbox_process",
        "sandbox",
        "make_settings",
        "misbehaving",
    }
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before any fixture is set up: the session's servers would start otherwise.
    asked = sorted(SERVER_FIXTURES & set(getattr(item, "fixturenames", ())))
    if asked:
        pytest.fail(
            f"a unit test asks for {', '.join(asked)}, which start servers: move it to "
            "tests/integration",
            pytrace=False,
        )


def _refuse(*args: Any, **kwargs: Any) -> NoReturn:
    raise AssertionError("a unit test starts a process: move it to tests/integration")


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every way a child starts: subprocess (whatever name it was imported under), fork
    # (multiprocessing's default), and the spawn/forkserver start methods.
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse)
    monkeypatch.setattr(os, "fork", _refuse)
    monkeypatch.setattr(os, "posix_spawn", _refuse)
    monkeypatch.setattr("multiprocessing.util.spawnv_passfds", _refuse)
