"""Fault tests with real Celery processes: SIGTERM mid-delivery, and a crowd of beats and workers."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from tests.support.faults import ROOT, Workload, relay_env, run_flush, stop, wait_for

pytestmark = pytest.mark.slow


class Celery:
    """Celery worker and beat processes sharing one test's settings."""

    def __init__(self, settings: Settings, logdir: Path) -> None:
        self.env = relay_env(settings)
        self.settings = settings
        self.logdir = logdir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        with open(self.logdir / f"{name}.log", "wb") as log:
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "tasks", *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        return self.procs[name]

    def worker(self, name: str, concurrency: int = 2) -> subprocess.Popen[bytes]:
        return self.start(
            name, "worker", "--concurrency", str(concurrency), "--loglevel", "INFO",
            "--without-mingle", "--without-gossip", "-n", f"{name}@{self.settings.namespace}",
        )  # fmt: skip

    def beat(self, name: str) -> subprocess.Popen[bytes]:
        schedule = self.settings.home / f"{name}-schedule"
        return self.start(name, "beat", "--loglevel", "INFO", "-s", str(schedule))

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            stop(proc, timeout=60)


@pytest.fixture
def celery(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Celery]:
    settings = make_settings(pump_seconds=3.0, heartbeat_seconds=2.0, lease_seconds=5.0)
    settings.home.mkdir(parents=True, exist_ok=True)
    fleet = Celery(settings, tmp_path)
    yield fleet
    fleet.stop_all()


def test_sigterm_mid_delivery_is_a_warm_shutdown(celery: Celery, sandbox: SandboxProcess) -> None:
    """What supervisor does with config/supervisord.conf (stopsignal=TERM to the main process
    only): running pumps finish, nothing is lost, no WorkerLostError."""
    enqueuer = Enqueuer(celery.settings)
    work = Workload()
    work.enqueue(enqueuer, 1500)
    enqueuer.close()
    # Slow responses keep deliveries in flight when the signal lands, and a backlog behind them.
    sandbox.set_faults(latency_ms=20)
    worker = celery.worker("worker")
    celery.beat("beat")
    assert wait_for(lambda: sandbox.stats()["datalook"]["accepted"] > 100, timeout=60)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(60) == 0, celery.log("worker")[-3000:]
    log = celery.log("worker")
    assert "WorkerLostError" not in log and "Traceback" not in log, log[-3000:]
    delivered_before = sandbox.stats()["datalook"]["accepted"]
    assert delivered_before < len(work.datalook), "the test must stop the worker mid-backlog"
    # The rest is delivered by the next worker; nothing delivered twice, nothing lost.
    sandbox.clear_faults()
    result = run_flush(celery.settings)
    assert result.returncode == 0, result.stderr
    assert work.check(sandbox, celery.settings) == {}
    assert sandbox.stats()["servoki"]["duplicates"] == 0


def test_two_beats_and_several_workers(celery: Celery, sandbox: SandboxProcess) -> None:
    """Duplicate wake-ups and concurrent claimers: no duplicate rows, no double claim."""
    enqueuer = Enqueuer(celery.settings)
    work = Workload()
    work.enqueue(enqueuer, 1000)
    enqueuer.close()
    for name in ("w1", "w2"):
        celery.worker(name)
    for name in ("beat1", "beat2"):
        celery.beat(name)
    assert wait_for(lambda: work.delivered(sandbox), timeout=120), sandbox.stats()
    celery.stop_all()
    assert work.check(sandbox, celery.settings) == {}
    assert sandbox.stats()["servoki"]["duplicates"] == 0  # no event was ever sent twice
    for name in ("w1", "w2"):
        assert "Traceback" not in celery.log(name), celery.log(name)[-3000:]
