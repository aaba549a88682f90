"""The Procfile under honcho: both process types deliver, and honcho's stop loses nothing.

honcho (like foreman and Heroku) stops a process type by sending SIGTERM to its whole process
group, pool children included; the tasks module makes children finish their pump round
instead of dying mid-task.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from tests.support.faults import ROOT, Workload, relay_env, wait_for

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent


class Honcho:
    def __init__(self, settings: Settings, log: Path) -> None:
        self.env = relay_env(settings, PATH=f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}")
        self.log_path = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            honcho = [str(VENV / "bin" / "honcho"), "-f", str(ROOT / "Procfile")]
            self.proc = subprocess.Popen(
                [*honcho, "-d", str(ROOT), "start", "--no-colour"],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> int:
        """SIGTERM to honcho, as Ctrl-C or a platform's stop would; honcho's own exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture
def honcho(make_settings: Callable[..., Settings], tmp_path: Path) -> Iterator[Honcho]:
    settings = make_settings(pump_seconds=3.0, heartbeat_seconds=2.0, lease_seconds=5.0)
    settings.home.mkdir(parents=True, exist_ok=True)
    runner = Honcho(settings, tmp_path / "honcho.log")
    runner.settings = settings  # type: ignore[attr-defined]
    yield runner
    if runner.proc is not None:
        runner.stop()


def test_procfile_delivers_and_stops_cleanly(honcho: Honcho, sandbox: SandboxProcess) -> None:
    settings: Settings = honcho.settings  # type: ignore[attr-defined]
    enqueuer = Enqueuer(settings)
    work = Workload()
    sandbox.set_faults(latency_ms=50)
    work.enqueue(enqueuer, 300)
    honcho.start()
    assert wait_for(lambda: sandbox.stats()["datalook"]["accepted"] > 50, 60), honcho.log()
    honcho.stop()
    assert sandbox.stats()["datalook"]["accepted"] < len(work.datalook)  # stopped mid-delivery
    log = honcho.log()
    # Both process types exited by themselves (exit status 0), within honcho's 5 s.
    assert "worker.1 stopped (rc=0)" in log and "beat.1 stopped (rc=0)" in log, log[-3000:]
    assert "sending SIGKILL" not in log and "Warm shutdown" in log
    assert "WorkerLostError" not in log and "Traceback" not in log

    sandbox.clear_faults()
    work.enqueue(enqueuer, 50)
    enqueuer.close()
    honcho.start()
    assert wait_for(lambda: work.delivered(sandbox), 60), honcho.log()[-3000:]
    honcho.stop()
    doubles = work.check(sandbox, settings)
    assert not doubles, f"DataLook double sends on a clean stop: {doubles}"
