"""Harness for the fault tests: real worker processes, a workload, and counting at the API."""

from __future__ import annotations

import glob
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.services import ROOT, relay_env

PUMP_SCRIPT = """
import logging, os, signal, sys
from relay.settings import load_settings
logging.basicConfig(level=os.environ.get("PUMP_LOG_LEVEL", "WARNING"))
from relay.worker.loop import Worker
worker = Worker(load_settings())
signal.signal(signal.SIGTERM, lambda *_: worker.stopping.set())
try:
    worker.pump(float(sys.argv[1]))
finally:
    worker.close()
"""


@dataclass
class Workload:
    """Events enqueued for a fault test, and what the API must end up with."""

    servoki: set[str] = field(default_factory=set)
    datalook: set[str] = field(default_factory=set)

    def enqueue(self, enqueuer: Enqueuer, n: int, *, chunk: int = 250) -> None:
        """``n`` events of each kind; DataLook ones carry their id as a property to count them."""
        start = len(self.servoki)
        for base in range(start, start + n, chunk):
            count = min(chunk, start + n - base)
            payloads = [{"event_type": "purchase", "value": float(i)} for i in range(count)]
            ids, items = enqueuer.encode_many("servoki", payloads)
            self.servoki.update(ids)
            enqueuer.push(items)
            dl_items = []
            for i in range(base, base + count):
                eid = f"dl-{enqueuer.keys.namespace}-{i}"
                payload = {"event_name": "click", "page_path": "/", "properties": {"eid": eid}}
                dl_items.append(enqueuer.encode("datalook", payload, eid)[1])
                self.datalook.add(eid)
            enqueuer.push(dl_items)

    def add_one(self, enqueue: Callable[[str, dict[str, Any], str | None], str], i: int) -> None:
        """One event of each kind through a real enqueue() call (used under faults)."""
        self.servoki.add(enqueue("servoki", {"event_type": "signup"}, None))
        eid = f"dl-live-{i}"
        payload = {"event_name": "click", "page_path": "/", "properties": {"eid": eid}}
        self.datalook.add(enqueue("datalook", payload, eid))

    def delivered(self, sandbox: SandboxProcess) -> bool:
        stats = sandbox.stats()
        return stats["servoki"]["accepted"] >= len(self.servoki) and stats["datalook"][
            "accepted"
        ] >= len(self.datalook)

    def check(self, sandbox: SandboxProcess, settings: Settings) -> Counter[str]:
        """Assert every event reached the API once (DataLook doubles are returned, not failed).

        Servoki by event_id (its server dedup drops resends), DataLook by its unique property.
        The outbox must hold one delivered row per event.
        """
        servoki_ids = Counter(e["body"]["event_id"] for e in sandbox.events("servoki"))
        assert set(servoki_ids) == self.servoki, "Servoki events lost or unknown"
        assert max(servoki_ids.values()) == 1
        datalook = Counter(e["body"]["properties"]["eid"] for e in sandbox.events("datalook"))
        assert set(datalook) == self.datalook, "DataLook events lost or unknown"
        engine = make_engine(settings.resolved_database_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(select(outbox.c.event_id, outbox.c.status)).all()
        finally:
            engine.dispose()
        assert len(rows) == len(self.servoki) + len(self.datalook)
        assert {status for _, status in rows} == {"delivered"}
        return Counter({eid: n - 1 for eid, n in datalook.items() if n > 1})


def run_flush(
    settings: Settings, *, failpoint: str | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    """``relay flush`` in its own process, optionally armed to SIGKILL itself at a failpoint."""
    extra = {"RELAY_FAILPOINTS": failpoint} if failpoint else {}
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", "flush", "--max-wait", "30"],
        env=relay_env(settings, **extra),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_pump(
    settings: Settings, seconds: float, log: Path, **extra: str
) -> subprocess.Popen[bytes]:
    """A worker process running ``Worker.pump`` (what the Celery task runs) for ``seconds``."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", PUMP_SCRIPT, str(seconds)],
            env=relay_env(settings, **extra),
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def libfaketime() -> str | None:
    """Debian's libfaketime (package ``faketime``; ``scripts/test`` installs it), if present."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


def skewed_clock(seconds: float) -> dict[str, str]:
    """Environment of a process on a host whose wall clock is ``seconds`` off.

    Only the wall clock: a real skewed host's monotonic clock still runs normally, and
    libfaketime would otherwise shift ``time.monotonic()`` too.
    """
    library = libfaketime()
    assert library is not None, "Debian's faketime package is not installed"
    return {
        "LD_PRELOAD": library,
        "FAKETIME": f"{seconds:+g}s",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


def stop(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
