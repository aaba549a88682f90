"""config/supervisord.conf under a real supervisord: stop mid-delivery, kill -9, metrics."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from tests.support.faults import ROOT, Workload, relay_env, wait_for

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent
MAIN_CONF = """
[unix_http_server]
file=%(here)s/supervisor.sock

[supervisord]
logfile=%(here)s/supervisord.log
pidfile=%(here)s/supervisord.pid
childlogdir=%(here)s
nodaemon=true

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://%(here)s/supervisor.sock

[include]
files = {config}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Supervisor:
    def __init__(self, settings: Settings, directory: Path, metrics_port: int) -> None:
        self.conf = directory / "supervisord.conf"
        self.conf.write_text(MAIN_CONF.format(config=ROOT / "config" / "supervisord.conf"))
        self.directory = directory
        self.env = relay_env(
            settings,
            RELAY_APP_DIR=str(ROOT),
            RELAY_VENV=str(VENV),
            RELAY_LOG_DIR=str(directory),
            RELAY_METRICS_PORT=str(metrics_port),
            RELAY_METRICS_ADDR="127.0.0.1",
        )
        self.proc = subprocess.Popen(
            [str(VENV / "bin" / "supervisord"), "-c", str(self.conf)],
            env=self.env,
            cwd=directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )

    def ctl(self, *args: str) -> str:
        result = subprocess.run(
            [str(VENV / "bin" / "supervisorctl"), "-c", str(self.conf), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        return result.stdout + result.stderr

    def pid(self, program: str) -> int:
        text = self.ctl("pid", f"relay:{program}").strip()
        return int(text) if text.isdigit() else 0

    def running(self, program: str) -> bool:
        return f"relay:{program}" in self.ctl("status") and "RUNNING" in self.ctl(
            "status", f"relay:{program}"
        )

    def log(self, name: str) -> str:
        path = self.directory / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def shutdown(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def supervisor(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> Iterator[tuple[Settings, Supervisor]]:
    settings = make_settings(pump_seconds=3.0, heartbeat_seconds=2.0, lease_seconds=5.0)
    settings.home.mkdir(parents=True, exist_ok=True)
    sup = Supervisor(settings, tmp_path, free_port())
    yield settings, sup
    sup.shutdown()


def scrape(port: int) -> dict[str, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


def test_stop_and_kill_under_supervisord(
    supervisor: tuple[Settings, Supervisor], sandbox: SandboxProcess
) -> None:
    settings, sup = supervisor
    assert wait_for(lambda: sup.running("relay-worker") and sup.running("relay-beat"), 30), sup.ctl(
        "status"
    ) + sup.log("worker")
    enqueuer = Enqueuer(settings)
    work = Workload()
    # Slow responses: deliveries are in flight when the signals land.
    sandbox.set_faults(latency_ms=50)
    work.enqueue(enqueuer, 300)

    # supervisorctl stop: SIGTERM to the main process, a warm shutdown.
    assert wait_for(lambda: sandbox.stats()["datalook"]["accepted"] > 50, 60), sup.log("worker")
    assert "relay:relay-worker: stopped" in sup.ctl("stop", "relay:relay-worker")
    assert sandbox.stats()["datalook"]["accepted"] < len(work.datalook)  # it was mid-delivery
    worker_log = sup.log("worker")
    assert "Warm shutdown" in worker_log and "WorkerLostError" not in worker_log
    assert "exited: relay-worker (exit status 0; expected)" in sup.log("supervisord") or (
        "stopped: relay-worker (exit status 0)" in sup.log("supervisord")
    )

    # kill -9 of the main process: supervisor starts a new worker, the leases and the reaper
    # recover what was in flight.
    sup.ctl("start", "relay:relay-worker")
    assert wait_for(lambda: sup.running("relay-worker"), 30)
    work.enqueue(enqueuer, 300)
    before = sandbox.stats()["datalook"]["accepted"]
    assert wait_for(lambda: sandbox.stats()["datalook"]["accepted"] > before + 50, 60), sup.log(
        "worker"
    )[-3000:]
    assert sandbox.stats()["datalook"]["accepted"] < len(work.datalook)
    pid = sup.pid("relay-worker")
    orphans = children_of(pid)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: sup.pid("relay-worker") not in (0, pid), 30), sup.ctl("status")
    assert wait_for(lambda: sup.running("relay-worker"), 30)
    sandbox.clear_faults()
    work.enqueue(enqueuer, 50)  # the restarted worker takes new work too
    enqueuer.close()
    assert wait_for(lambda: work.delivered(sandbox), 90), sup.log("worker")[-3000:]
    doubles = work.check(sandbox, settings)
    print(f"DataLook double sends after kill -9: {sum(doubles.values())}")
    # The pool children died with their main process (Celery sets PR_SET_PDEATHSIG).
    assert wait_for(lambda: not any(alive(p) for p in orphans), 30)

    # Metrics: served by the restarted worker's main process, summed over its pool children.
    port = int(sup.env["RELAY_METRICS_PORT"])
    assert wait_for(lambda: sup.running("relay-worker"), 5)
    values = scrape(port)
    assert values["relay_queue_length"] == 0
    assert values['relay_backlog{destination="servoki"}'] == 0
    assert values['relay_state_up{part="redis"}'] == 1
    assert values['relay_state_up{part="database"}'] == 1
    assert values['relay_destination_paused{destination="datalook"}'] == 0
    assert values['relay_events_delivered_total{destination="servoki"}'] > 0
    assert 'relay_delivery_latency_seconds_count{destination="datalook"}' in values
    assert any(k.startswith("relay_limiter_wait_seconds_count") for k in values)
    assert sup.ctl("stop", "relay:").count("stopped") == 2
