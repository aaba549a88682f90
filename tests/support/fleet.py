"""A fleet of worker "hosts" on one machine, for the fleet fault test.

Each host is one worker process (``Worker.pump``, what the Celery task runs) with its own host
name and its own egress address:

- the host name is what ``socket.gethostname()`` answers inside that process, so the consumer
  id (``host:pid:random``) and ``RELAY_SERVOKI_EGRESS_SCOPE=host`` see the host they would see
  on a real machine;
- ``FLEET_KILL_AT`` names a failpoint (``relay/worker/failpoints.py``) where the host dies by
  SIGKILL the first time it gets there after the test sends it SIGUSR1: a kill at a chosen
  moment and at an exact line;
- the egress address is the source of every TCP connection to a loopback address: Linux
  routes all of 127.0.0.0/8 to ``lo``, so ``127.0.0.2``, ``127.0.0.3`` … are distinct client
  IPs to the sandbox, which counts Servoki's limit per client IP like the real API. Hosts
  behind one NAT share one address.

Redis and PostgreSQL are reached over unix sockets and are shared by every host, as in a real
fleet. Nothing in the relay changes for this: the process is set up before the relay is
imported, by the lines of ``HOST_SCRIPT``.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.faults import PUMP_SCRIPT, Workload
from tests.support.services import ROOT, relay_env

HOST_SCRIPT = (
    """
import os, socket
_name, _egress = os.environ["FLEET_HOST_NAME"], os.environ["FLEET_EGRESS_IP"]
socket.gethostname = lambda: _name
_connect = socket.create_connection

def _from_egress(address, timeout=socket._GLOBAL_DEFAULT_TIMEOUT, source_address=None, **kw):
    # This host's own IP for every loopback connection (the sandbox), as a real host has.
    if source_address is None and str(address[0]).startswith("127."):
        source_address = (_egress, 0)
    return _connect(address, timeout, source_address, **kw)

socket.create_connection = _from_egress

_kill_at = os.environ.get("FLEET_KILL_AT")
if _kill_at:
    import signal, threading
    from relay.worker import failpoints
    _armed = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: _armed.set())

    def _hit(name):
        # Armed by SIGUSR1: the next time this process reaches the line, it dies there.
        if name == _kill_at and _armed.is_set():
            os.kill(os.getpid(), signal.SIGKILL)

    failpoints.hit = _hit
"""
    + PUMP_SCRIPT
)


@dataclass
class Host:
    """One worker host: its name, egress IP and worker process."""

    name: str
    egress_ip: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_host(
    settings: Settings, name: str, egress_ip: str, logdir: Path, seconds: float, **extra: str
) -> Host:
    """A worker process on host ``name`` sending from ``egress_ip``, pumping for ``seconds``."""
    log = logdir / f"{name}.log"
    env = relay_env(settings, FLEET_HOST_NAME=name, FLEET_EGRESS_IP=egress_ip, **extra)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOST_SCRIPT, str(seconds)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Host(name, egress_ip, proc, log)


class Producer:
    """Web handlers enqueueing at a steady rate, in a thread: ``rates`` events per second per
    destination (changeable while it runs), pushed as one mixed batch every ``tick`` s."""

    def __init__(self, settings: Settings, rates: dict[str, float], tick: float = 0.1) -> None:
        self.enqueuer = Enqueuer(settings)
        self.rates = dict(rates)
        self.tick = tick
        self.work = Workload()
        self._owed = dict.fromkeys(rates, 0.0)
        self._count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self.failure: BaseException | None = None

    def push(self, servoki: int, datalook: int) -> None:
        """One batch: ``servoki`` and ``datalook`` events mixed evenly, so every batch a
        worker drains holds both in proportion."""
        items: list[bytes] = []
        total = servoki + datalook
        for i in range(total):
            self._count += 1
            # The i-th item is Servoki's when the running share of Servoki steps up.
            if (i + 1) * servoki // total > i * servoki // total:
                payload: dict[str, Any] = {"event_type": "purchase", "value": float(i)}
                event_id, item = self.enqueuer.encode("servoki", payload)
                self.work.servoki.add(event_id)
            else:
                eid = f"dl-fleet-{self._count}"
                payload = {"event_name": "click", "page_path": "/", "properties": {"eid": eid}}
                item = self.enqueuer.encode("datalook", payload, eid)[1]
                self.work.datalook.add(eid)
            items.append(item)
        if items:
            self.enqueuer.push(items)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            due = time.monotonic()
            while not self._stop.is_set():
                for name, per_second in self.rates.items():
                    self._owed[name] += per_second * self.tick
                counts = {name: int(owed) for name, owed in self._owed.items()}
                for name, count in counts.items():
                    self._owed[name] -= count
                self.push(counts.get("servoki", 0), counts.get("datalook", 0))
                due += self.tick
                self._stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:
            self.failure = exc

    def stop(self) -> Workload:
        """Stop pushing; every event pushed so far."""
        self._stop.set()
        self._thread.join()
        self.enqueuer.close()
        assert self.failure is None, self.failure
        return self.work


def leased_rows(settings: Settings) -> set[tuple[int, str, str]]:
    """(id, destination, lease token) of every pending row that holds a lease."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(outbox.c.id, outbox.c.destination, outbox.c.lease_token).where(
                    outbox.c.status == "pending", outbox.c.lease_token.is_not(None)
                )
            ).all()
    finally:
        engine.dispose()
    return {(row.id, row.destination, row.lease_token) for row in rows}


def pending_rows(settings: Settings) -> int:
    """Rows not yet delivered (nor dead)."""
    engine = make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(outbox.c.id).where(outbox.c.status == "pending")).all()
    finally:
        engine.dispose()
    return len(rows)


def rate(times: list[float], start: float, end: float) -> float:
    """Arrivals per second in [start, end)."""
    return sum(1 for t in times if start <= t < end) / (end - start)
