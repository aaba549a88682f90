"""End-to-end benchmark: enqueue cost, flush throughput and idle latency, each against a baseline.

    .venv/bin/python -m bench.e2e [--events N] [--quick]

Starts its own redis-server (unix socket and loopback TCP), the sandbox with its limits off,
SQLite in a temp dir and PostgreSQL when pgserver is installed. Every number is printed next to
a baseline measured in the same run on the same services; nothing is asserted.

1. ``enqueue()`` vs a bare redis-py ``RPUSH`` of the same bytes (alternating blocks of calls);
   ``enqueue_many`` of 100 vs a bare ``RPUSH`` of 100; ``enqueue()`` with Redis refusing
   connections (the outbox fallback) vs a bare single-row INSERT through an engine set up the
   same way, on SQLite and PostgreSQL.
2. ``Worker.flush()`` of N queued events (half Servoki, half DataLook) vs a bare sync httpx
   loop posting the same bodies with the same headers: events/s, and CPU seconds of this
   process per 1,000 events, with the SQL statements (and commits) per event.
3. Idle latency: enqueue → sandbox arrival with ``Worker.pump`` running, vs one bare POST.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import redis
from sqlalchemy import Engine, event

import relay
from bench.common import (
    Postgres,
    bench_settings,
    datalook_event,
    free_port,
    mixed_events,
    percentile,
    print_table,
    ratio,
    redis_server,
    servoki_event,
    start_postgres,
    summarize,
)
from relay.destinations.base import HttpRequest
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.outbox.schema import outbox
from relay.outbox.store import utcnow
from relay.settings import Settings
from relay.worker.delivery import encode_body
from relay.worker.loop import Worker

BLOCK = 100
"""Calls per block when alternating the two sides of a latency comparison."""


@dataclass
class Plan:
    events: int
    enqueue_calls: int
    idle_events: int
    idle_spacing: float = 0.2


@dataclass
class Env:
    home: Path
    redis_urls: dict[str, str]
    sandbox: SandboxProcess
    postgres: Postgres | None
    runs: int = 0

    def settings(self, backend: str = "sqlite", transport: str = "unix", **extra: Any) -> Settings:
        """Settings with a fresh namespace and a fresh outbox database."""
        self.runs += 1
        if backend == "postgresql":
            assert self.postgres is not None
            database_url = self.postgres.fresh_url()
        else:
            database_url = f"sqlite:///{self.home / f'outbox-{self.runs}.db'}"
        extra.setdefault("namespace", f"bench{self.runs}")
        return bench_settings(
            self.home, self.redis_urls[transport], database_url, self.sandbox.url, **extra
        )


# -- 1. enqueue ------------------------------------------------------------------------------


def timed_calls(calls: list[Callable[[], object]]) -> list[float]:
    """Seconds each call took."""
    out: list[float] = []
    clock = time.perf_counter
    for call in calls:
        start = clock()
        call()
        out.append(clock() - start)
    return out


def alternate(
    a: list[Callable[[], object]], b: list[Callable[[], object]], block: int
) -> tuple[list[float], list[float]]:
    """Run ``a`` and ``b`` in alternating blocks, swapping which goes first each round."""
    times_a: list[float] = []
    times_b: list[float] = []
    for round_, start in enumerate(range(0, len(a), block)):
        run_a = lambda s=start: times_a.extend(timed_calls(a[s : s + block]))  # noqa: E731
        run_b = lambda s=start: times_b.extend(timed_calls(b[s : s + block]))  # noqa: E731
        for run in (run_a, run_b) if round_ % 2 == 0 else (run_b, run_a):
            run()
    return times_a, times_b


def bench_enqueue(env: Env, transport: str, calls: int) -> tuple[list[object], list[object]]:
    """Two rows: enqueue() vs bare RPUSH (p50/p99 µs); enqueue_many(100) vs RPUSH of 100."""
    settings = env.settings(transport=transport)
    enqueuer = relay.configure(settings)
    # The baseline: redis-py's own RPUSH with enqueue()'s client settings (timeouts, no retries).
    bare = redis.Redis.from_url(settings.resolved_redis_url, **enqueuer._timeouts())
    bare_key = enqueuer.keys.queue + ":bare"
    events = mixed_events(calls)
    items = [enqueuer.encode(dest, payload)[1] for dest, payload in events]

    # Both sides warm (connections open, caches filled) before the timed blocks.
    warm = min(500, calls)
    alternate(
        [lambda d=d, p=p: relay.enqueue(d, p) for d, p in events[:warm]],
        [lambda i=i: bare.rpush(bare_key, i) for i in items[:warm]],
        BLOCK,
    )
    relay_times, bare_times = alternate(
        [lambda d=d, p=p: relay.enqueue(d, p) for d, p in events],
        [lambda i=i: bare.rpush(bare_key, i) for i in items],
        BLOCK,
    )

    # enqueue_many: one destination per call, as the API takes it; as many events as above.
    batches = max(4, calls // 100)
    payloads = [
        ("servoki", [servoki_event(b * 100 + i) for i in range(100)])
        if b % 2 == 0
        else ("datalook", [datalook_event(b * 100 + i) for i in range(100)])
        for b in range(batches)
    ]
    item_batches = [enqueuer.encode_many(dest, batch)[1] for dest, batch in payloads]
    many_times, bare_many_times = alternate(
        [lambda d=d, p=p: relay.enqueue_many(d, p) for d, p in payloads],
        [lambda i=i: bare.rpush(bare_key, *i) for i in item_batches],
        2,
    )
    bare.delete(enqueuer.keys.queue, bare_key)
    bare.close()
    enqueuer.close()

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.0f}"

    r50, r99 = percentile(relay_times, 50), percentile(relay_times, 99)
    b50, b99 = percentile(bare_times, 50), percentile(bare_times, 99)
    many_eps = 100 * len(many_times) / sum(many_times)
    bare_many_eps = 100 * len(bare_many_times) / sum(bare_many_times)
    size = sum(map(len, items)) / len(items)
    for q, mine, base in ((50, r50, b50), (99, r99, b99)):
        summarize(
            f"enqueue() p{q}, {transport} ({calls} calls, {size:.0f} B)",
            f"{us(mine)} µs",
            f"bare RPUSH {us(base)} µs",
            ratio(mine, base),
            f"≤ {'1.3' if q == 50 else '1.5'}x",
        )
    single = [f"enqueue() x{calls}, {transport}, {size:.0f} B", us(r50), us(b50), ratio(r50, b50)]
    single += [us(r99), us(b99), ratio(r99, b99)]
    many = [f"enqueue_many(100) x{batches}, {transport}", f"{many_eps:,.0f}"]
    many += [f"{bare_many_eps:,.0f}", ratio(bare_many_eps, many_eps)]
    return single, many


def bench_fallback(env: Env, backend: str, calls: int) -> list[object]:
    """One row: enqueue() falling back to the outbox vs a bare one-row INSERT (p50/p99 µs)."""
    refused = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: refused at once
    settings = env.settings(backend).model_copy(update={"redis_url": refused})
    url = settings.resolved_database_url
    engine = make_engine(url)  # what the worker does first: the fallback only writes into it
    upgrade(engine)
    engine.dispose()
    enqueuer = relay.configure(settings)
    timeout = settings.enqueue_timeout
    bare = make_engine(url, connect_timeout=timeout, statement_timeout=timeout, create=False)
    events = mixed_events(calls)
    now = utcnow()
    rows = [
        {
            "destination": dest, "event_id": f"bare-{i}", "payload": payload,
            "status": "pending", "attempts": 0, "next_attempt_at": now, "enqueued_at": now,
            "created_at": now, "updated_at": now,
        }
        for i, (dest, payload) in enumerate(events)
    ]  # fmt: skip

    def insert(row: dict[str, Any]) -> None:
        with bare.begin() as conn:
            conn.execute(outbox.insert().values(row))

    fresh = first_fallback_in_a_fresh_process(settings)
    start = time.perf_counter()
    relay.enqueue(*events[0])  # the first call opens the engine and checks the schema
    first = time.perf_counter() - start
    insert({**rows[0], "event_id": "bare-warm"})
    relay_times, bare_times = alternate(
        [lambda d=d, p=p: relay.enqueue(d, p) for d, p in events[1:]],
        [lambda r=r: insert(r) for r in rows[1:]],
        BLOCK,
    )
    bare.dispose()
    enqueuer.close()

    def us(seconds: float) -> str:
        return f"{seconds * 1e6:.0f}"

    r50, r99 = percentile(relay_times, 50), percentile(relay_times, 99)
    b50, b99 = percentile(bare_times, 50), percentile(bare_times, 99)
    row: list[object] = [f"fallback enqueue() x{len(relay_times)}, {backend}", us(r50), us(b50)]
    row += [ratio(r50, b50), us(r99), us(b99), ratio(r99, b99), f"{first * 1e3:.0f}"]
    return [*row, f"{fresh * 1e3:.0f}"]


def first_fallback_in_a_fresh_process(settings: Settings) -> float:
    """Seconds of the first fallback enqueue() in a new process (it imports SQLAlchemy)."""
    script = f"""
import json, sys, time
from bench.common import bench_settings, servoki_event
import relay
settings = bench_settings(
    {str(settings.home)!r}, {settings.redis_url!r}, {settings.resolved_database_url!r},
    "https://servoki.com", namespace="fresh")
relay.configure(settings)
start = time.perf_counter()
relay.enqueue("servoki", servoki_event(0))
print(json.dumps(time.perf_counter() - start))
"""
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root
    )
    return float(json.loads(result.stdout.splitlines()[-1]))


# -- 2. throughput ----------------------------------------------------------------------------


def requests_for(worker: Worker, items: list[bytes]) -> list[HttpRequest]:
    """The requests the relay will send for ``items``: same body bytes, same headers."""
    out = []
    for item in items:
        data = json.loads(item)
        out.append(worker.destinations[data["d"]].build_request(encode_body(data["p"])))
    return out


def bare_client() -> httpx.Client:
    """The baseline: a plain httpx client with the relay's default timeouts, nothing else."""
    return httpx.Client(timeout=httpx.Timeout(10.0, connect=3.0))


def post_all(
    client: httpx.Client, requests: list[HttpRequest], threads: int = 1
) -> tuple[float, float]:
    """(seconds, CPU seconds of this process) to POST every request (``threads`` at a time);
    raises on a non-2xx answer."""

    def post(request: HttpRequest) -> None:
        response = client.request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        response.raise_for_status()

    cpu = time.process_time()
    start = time.perf_counter()
    if threads == 1:
        for request in requests:
            post(request)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(post, requests))
    return time.perf_counter() - start, time.process_time() - cpu


def accepted(sandbox: SandboxProcess) -> int:
    stats = sandbox.stats()
    return int(stats["servoki"]["accepted"]) + int(stats["datalook"]["accepted"])


def count_statements(engine: Engine) -> Callable[[], int]:
    """Count the SQL statements and commits ``engine`` runs from now on; returns the reader."""
    seen = [0]

    def one(*_: object) -> None:
        seen[0] += 1

    event.listen(engine, "before_cursor_execute", one)
    event.listen(engine, "commit", one)
    return lambda: seen[0]


THROUGHPUT_HEADER = [
    "run", "events/s", "vs bare loop", "CPU s/1k ev", "CPU vs bare", "SQL/ev",
    "accepted (flush exit)", "slots granted/missed", "push ev/s",
]  # fmt: skip


def bench_throughput(env: Env, backends: list[str], n: int) -> list[list[object]]:
    """Rows: flush events/s and CPU seconds per 1,000 events per backend, each next to a bare
    loop run just before it.

    CPU is this process's (``time.process_time``: every thread, user + system) while it
    flushes, or while the bare loop posts: the worker's own cost, without Redis's, the
    database server's or the sandbox's. SQL/ev counts statements and commits per event (an
    SQLAlchemy ``before_cursor_execute`` and ``commit`` listener on the worker's engine).
    """
    rows: list[list[object]] = []
    sandbox = env.sandbox
    http = bare_client()
    concurrency = Settings.model_fields["send_concurrency"].default
    blank = [""] * (len(THROUGHPUT_HEADER) - 5)
    for backend in backends:
        settings = env.settings(backend)
        worker = Worker(settings)
        enqueuer = Enqueuer(settings)
        items = [enqueuer.encode(dest, payload)[1] for dest, payload in mixed_events(n)]
        requests = requests_for(worker, items)

        sandbox.reset()
        bare_s, bare_cpu = post_all(http, requests)
        if backend == backends[0]:
            sandbox.reset()
            threads_s, threads_cpu = post_all(http, requests, concurrency)
            rows.append(
                [f"bare httpx, {concurrency} threads", f"{n / threads_s:,.0f}", "",
                 f"{threads_cpu / n * 1000:.2f}", "", *blank]
            )  # fmt: skip

        sandbox.reset()
        start = time.perf_counter()
        for i in range(0, n, 500):
            enqueuer.push(items[i : i + 500])
        enqueue_s = time.perf_counter() - start
        statements = count_statements(worker.engine)
        cpu = time.process_time()
        start = time.perf_counter()
        report = worker.flush(max_wait=5.0)
        flush_s = time.perf_counter() - start
        flush_cpu = time.process_time() - cpu
        got = accepted(sandbox)
        stats = getattr(worker.limiter, "stats", None)
        slots = f"{stats.granted}/{stats.missed}" if stats is not None else ""
        worker.close()
        enqueuer.close()

        bare_eps = n / bare_s
        summarize(
            f"end to end, limits off, {backend} ({n} events)",
            f"{n / flush_s:,.0f} ev/s",
            f"bare httpx loop {bare_eps:,.0f}/s",
            ratio(n / flush_s, bare_eps),
            "≥ 0.6x",
        )
        summarize(
            f"CPU per 1,000 delivered events, {backend}",
            f"{flush_cpu / n * 1000:.2f} s",
            f"bare loop {bare_cpu / n * 1000:.2f} s",
            ratio(flush_cpu, bare_cpu),
            "report",
        )
        rows.append(
            [f"bare httpx loop (before {backend})", f"{bare_eps:,.0f}", "",
             f"{bare_cpu / n * 1000:.2f}", "", *blank]
        )  # fmt: skip
        rows.append(
            [
                f"relay flush, {backend}",
                f"{n / flush_s:,.0f}",
                ratio(n / flush_s, bare_eps),
                f"{flush_cpu / n * 1000:.2f}",
                ratio(flush_cpu, bare_cpu),
                f"{statements() / n:.3f}",
                f"{got}/{n} (exit {report.exit_code})",
                slots,
                f"{n / enqueue_s:,.0f}",
            ]
        )
    http.close()
    return rows


# -- 3. idle latency --------------------------------------------------------------------------


def arrivals(sandbox: SandboxProcess) -> dict[str, float]:
    """Sandbox arrival time (its CLOCK_MONOTONIC, same as ours) by our label of the event."""
    out = {e["body"]["event_id"]: e["t"] for e in sandbox.events("servoki")}
    out |= {f"dl-{e['body']['properties']['n']}": e["t"] for e in sandbox.events("datalook")}
    return out


def wait_for(sandbox: SandboxProcess, count: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while accepted(sandbox) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def idle_events(n: int) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, destination, payload); the label is what the sandbox's stored body shows."""
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append((f"idle-{i}", "servoki", {**servoki_event(i), "event_id": f"idle-{i}"}))
        else:
            event = datalook_event(i)
            event["properties"]["n"] = i
            out.append((f"dl-{i}", "datalook", event))
    return out


def bench_idle(env: Env, backends: list[str], plan: Plan) -> list[list[object]]:
    """Rows: enqueue → arrival latency (ms) with a pumping worker, vs a bare POST's."""
    sandbox = env.sandbox
    events = idle_events(plan.idle_events)
    rows: list[list[object]] = []

    # Baseline: one POST at a time, from just before the call to the sandbox's arrival stamp.
    settings = env.settings()
    worker = Worker(settings)
    enqueuer = Enqueuer(settings)
    http = bare_client()
    sandbox.reset()
    sent: dict[str, float] = {}
    for label, dest, payload in events:
        request = requests_for(worker, [enqueuer.encode(dest, payload)[1]])[0]
        time.sleep(plan.idle_spacing)
        sent[label] = time.monotonic()
        http.request(request.method, request.url, headers=request.headers, content=request.body)
    base = latencies(sent, arrivals(sandbox))
    worker.close()
    enqueuer.close()
    http.close()
    rows.append(["bare httpx POST", *latency_cells(base, base)])

    for backend in backends:
        settings = env.settings(backend)
        worker = Worker(settings)
        enqueuer = Enqueuer(settings)
        sandbox.reset()
        pump = threading.Thread(target=worker.pump, kwargs={"seconds": 3600.0})
        pump.start()
        time.sleep(0.5)  # let the first round (reap, heartbeat) pass
        sent = {}
        for label, dest, payload in events:
            time.sleep(plan.idle_spacing)
            sent[label] = time.monotonic()
            enqueuer.push([enqueuer.encode(dest, payload)[1]])
        wait_for(sandbox, len(events))
        worker.stopping.set()
        pump.join()
        worker.close()
        enqueuer.close()
        rows.append(
            [f"relay pump, {backend}", *latency_cells(latencies(sent, arrivals(sandbox)), base)]
        )
    return rows


def latencies(sent: dict[str, float], arrived: dict[str, float]) -> list[float]:
    return [arrived[label] - t for label, t in sent.items() if label in arrived]


def latency_cells(values: list[float], base: list[float]) -> list[object]:
    p50, p99 = percentile(values, 50), percentile(values, 99)
    b50, b99 = percentile(base, 50), percentile(base, 99)
    return [
        f"{p50 * 1e3:.1f}",
        ratio(p50, b50),
        f"{p99 * 1e3:.1f}",
        ratio(p99, b99),
        f"{max(values) * 1e3:.1f}" if values else "nan",
        f"{len(values)}",
    ]


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=None, help="events per flush (5000)")
    parser.add_argument("--quick", action="store_true", help="smaller runs, about 30 s")
    args = parser.parse_args(argv)
    if args.quick:
        plan = Plan(events=1000, enqueue_calls=1000, idle_events=10)
    else:
        plan = Plan(events=5000, enqueue_calls=5000, idle_events=30)
    if args.events is not None:
        plan.events = args.events
    return plan


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    began = time.perf_counter()
    # pgserver's socket path must stay short: a short temp dir under /tmp.
    home = Path(tempfile.mkdtemp(prefix="rb-", dir="/tmp"))
    sandbox = SandboxProcess(servoki_limit=None, datalook_limit=None)
    postgres: Postgres | None = None
    try:
        (home / "redis").mkdir()
        with redis_server(home / "redis") as server:
            sandbox.start()
            postgres = start_postgres(home / "pg")
            env = Env(
                home=home,
                redis_urls={"unix": server.unix_url, "tcp": server.tcp_url},
                sandbox=sandbox,
                postgres=postgres,
            )
            backends = ["sqlite"] + (["postgresql"] if postgres else [])
            print(
                f"relay e2e benchmark: {plan}; backends {backends}; python {sys.version.split()[0]}"
            )

            unix, tcp = (
                bench_enqueue(env, "unix", plan.enqueue_calls),
                bench_enqueue(env, "tcp", plan.enqueue_calls),
            )
            print_table(
                "1a. enqueue() vs bare redis-py RPUSH of the same bytes, µs per call "
                f"(alternating blocks of {BLOCK}); ratio = relay / bare",
                ["call", "p50", "bare p50", "ratio", "p99", "bare p99", "ratio"],
                [unix[0], tcp[0]],
            )
            print_table(
                "1b. enqueue_many(100) vs bare RPUSH of the same 100 items; ratio = cost "
                "relay / bare",
                ["call", "events/s", "bare events/s", "ratio"],
                [unix[1], tcp[1]],
            )
            # One warning per fallback write is the point in production, noise here.
            logging.getLogger("relay.enqueue").setLevel(logging.ERROR)
            fallback_calls = max(200, plan.enqueue_calls // 5)
            print_table(
                "1c. enqueue() with Redis refusing connections (outbox fallback) vs a bare "
                "one-row INSERT through an engine with the same timeouts, µs per call "
                f"(alternating blocks of {BLOCK}); first: the first call, ms (in this process, "
                "in a fresh one that still has to import SQLAlchemy)",
                ["call", "p50", "bare p50", "ratio", "p99", "bare p99", "ratio", "first", "fresh"],
                [bench_fallback(env, backend, fallback_calls) for backend in backends],
            )

            rows = bench_throughput(env, backends, plan.events)
            print_table(
                f"2. throughput: {plan.events} queued events (half Servoki, half DataLook) → "
                "sandbox, limits off; CPU: this process's, per 1,000 events",
                THROUGHPUT_HEADER,
                rows,
            )
            print(
                "   relay-side limits set to 1000000/1s; a missed slot (sent > jitter/2 after it) "
                "costs a re-reservation"
            )

            rows = bench_idle(env, backends, plan)
            print_table(
                f"3. idle latency: {plan.idle_events} events {plan.idle_spacing * 1e3:.0f} ms "
                "apart, enqueue → sandbox arrival (ms)",
                ["path", "p50", "vs bare", "p99", "vs bare", "max", "n"],
                rows,
            )
    finally:
        sandbox.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(home, ignore_errors=True)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
