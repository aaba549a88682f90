"""Pickup latency of the transactional enqueue vs the queued one, on an idle relay.

    .venv/bin/python -m bench.transactional [--events N] [--spacing S]

Same services as ``bench.e2e`` (its own redis-server, the sandbox with limits off, SQLite and
PostgreSQL when pgserver is installed). One ``Worker.pump`` runs; events go one at a time,
``--spacing`` apart, so the worker is idle (blocked on the queue) when each arrives. Latency is
from just before the call (for the transactional paths: before the application's transaction
begins, its commit included) to the sandbox's arrival stamp:

- ``enqueue()``: one RPUSH, the drain inserts the row, dispatch claims it;
- ``enqueue_in(session)`` / ``enqueue_in(connection)``: the row in the application's
  transaction (a plain ``create_engine``), then a wake-up item after the commit;
- the same without the wake-up: what the worker's idle poll (``idle_wait``, 0.5 s) alone gives.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session

import relay
from bench.common import Postgres, percentile, print_table, redis_server, start_postgres, summarize
from bench.e2e import Env, arrivals, idle_events, latencies, latency_cells, wait_for
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.worker.loop import Worker

Send = Callable[[Engine, str, dict[str, Any]], None]


def queued(engine: Engine, destination: str, payload: dict[str, Any]) -> None:
    relay.enqueue(destination, payload)


def in_session(engine: Engine, destination: str, payload: dict[str, Any]) -> None:
    with Session(engine) as session, session.begin():
        relay.enqueue_in(session, destination, payload)


def on_connection(engine: Engine, destination: str, payload: dict[str, Any]) -> None:
    with engine.begin() as conn:
        relay.enqueue_in(conn, destination, payload)


@contextmanager
def without_wakeups() -> Iterator[None]:
    wake = Enqueuer.wake
    Enqueuer.wake = lambda self: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        Enqueuer.wake = wake  # type: ignore[method-assign]


def run_path(env: Env, backend: str, send: Send, n: int, spacing: float) -> list[float]:
    """Latencies (s) of ``n`` events sent one at a time to an idle pumping worker."""
    settings = env.settings(backend)
    worker = Worker(settings)  # migrates a SQLite outbox; PostgreSQL's is a migrated clone
    enqueuer = relay.configure(settings)
    engine = create_engine(settings.resolved_database_url)
    env.sandbox.reset()
    pump = threading.Thread(target=worker.pump, kwargs={"seconds": 3600.0})
    pump.start()
    try:
        time.sleep(0.5)  # the first round (reap, heartbeat) passes; the worker is idle
        events = idle_events(n)
        for _, destination, payload in events[:4]:  # warm the app's pool and the schema check
            send(
                engine,
                destination,
                {**payload, "event_id": "warm"} if "event_id" in payload else payload,
            )
        wait_for(env.sandbox, 4)
        env.sandbox.reset()
        sent: dict[str, float] = {}
        for label, destination, payload in events:
            time.sleep(spacing)
            sent[label] = time.monotonic()
            send(engine, destination, payload)
        wait_for(env.sandbox, len(events))
        return latencies(sent, arrivals(env.sandbox))
    finally:
        worker.stopping.set()
        pump.join()
        worker.close()
        enqueuer.close()
        engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=60)
    parser.add_argument("--spacing", type=float, default=0.1)
    args = parser.parse_args(argv)
    home = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    sandbox = SandboxProcess(servoki_limit=None, datalook_limit=None)
    postgres: Postgres | None = None
    try:
        (home / "redis").mkdir()
        with redis_server(home / "redis") as server:
            sandbox.start()
            postgres = start_postgres(home / "pg")
            env = Env(home, {"unix": server.unix_url}, sandbox, postgres)
            backends = ["sqlite"] + (["postgresql"] if postgres else [])
            rows: list[list[object]] = []
            for backend in backends:
                base = run_path(env, backend, queued, args.events, args.spacing)
                rows.append([f"enqueue(), {backend}", *latency_cells(base, base)])
                for name, send in (("session", in_session), ("connection", on_connection)):
                    values = run_path(env, backend, send, args.events, args.spacing)
                    rows.append([f"enqueue_in({name}), {backend}", *latency_cells(values, base)])
                    summarize(
                        f"pickup, enqueue_in({name}) → API, {backend}: p50",
                        f"{percentile(values, 50) * 1e3:.1f} ms",
                        f"enqueue() {percentile(base, 50) * 1e3:.1f} ms",
                        f"{percentile(values, 50) / percentile(base, 50):.2f}x",
                        "as fast as a queued event",
                    )
                with without_wakeups():
                    values = run_path(env, backend, in_session, args.events // 3, args.spacing)
                rows.append([f"  same, no wake-up, {backend}", *latency_cells(values, base)])
            print_table(
                f"pickup latency on an idle relay: {args.events} events {args.spacing * 1e3:.0f} "
                "ms apart, call → sandbox arrival (ms)",
                ["path", "p50", "vs enqueue()", "p99", "vs enqueue()", "max", "n"],
                rows,
            )
    finally:
        sandbox.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
