"""Real Celery worker and beat processes deliver to the sandbox."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from tests.support.services import ROOT, relay_env

pytestmark = pytest.mark.slow


class Processes:
    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        self.env = env
        self.logdir = logdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = open(self.logdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tasks", *args],
            env=self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logdir.glob("*.log"))


@pytest.fixture
def celery(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, Processes]]:
    settings = make_settings()
    procs = Processes(relay_env(settings, RELAY_PUMP_SECONDS="3"), tmp_path)
    yield settings, procs
    procs.stop()


def wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_worker_and_beat_deliver_everything(
    celery: tuple[Settings, Processes], sandbox: SandboxProcess
) -> None:
    settings, procs = celery
    procs.start(
        "worker",
        "worker",
        "--concurrency",
        "2",
        "--loglevel",
        "INFO",
        "--without-mingle",
        "--without-gossip",
        "-n",
        f"w1@{settings.namespace}",
    )
    procs.start("beat", "beat", "--loglevel", "INFO", "-s", str(settings.home / "beat-schedule"))
    enqueuer = Enqueuer(settings)
    try:
        ids = enqueuer.encode_many(
            "servoki", [{"event_type": "purchase", "value": i} for i in range(150)]
        )
        enqueuer.push(ids[1])
        enqueuer.push(ids[1][:20])  # the web side retried some: same ids again
        dl = enqueuer.encode_many(
            "datalook", [{"event_name": "click", "page_path": f"/{i}"} for i in range(100)]
        )
        enqueuer.push(dl[1])
        delivered = wait_for(
            lambda: (
                sandbox.stats()["servoki"]["accepted"] == 150
                and sandbox.stats()["datalook"]["accepted"] == 100
            ),
            timeout=60,
        )
        assert delivered, procs.logs()
        # An event on a now idle relay reaches the API quickly (woken, not polled).
        time.sleep(1.0)
        started = time.time()
        enqueuer.push([enqueuer.encode("servoki", {"event_type": "signup"}, "late-1")[1]])
        assert wait_for(lambda: sandbox.stats()["servoki"]["accepted"] == 151, timeout=10)
        arrival = next(
            e["received_at"] for e in sandbox.events("servoki") if e["body"]["event_id"] == "late-1"
        )
        print(f"idle latency enqueue → API: {(arrival - started) * 1000:.0f} ms")
        assert sandbox.stats()["servoki"]["duplicates"] == 0
    finally:
        enqueuer.close()
    procs.stop()
    assert all(p.returncode == 0 for p in procs.procs), procs.logs()
    assert "WorkerLostError" not in procs.logs()
