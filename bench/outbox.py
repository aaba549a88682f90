"""Big outboxes: claims, operator commands, prune and a worker's memory beside a million rows.

    .venv/bin/python -m bench.outbox [--rows N] [--backlog N] [--quick] [--only SECTIONS]

Starts its own redis-server, the sandbox with its limits off, SQLite in a temp dir and
PostgreSQL when pgserver is installed. Every figure is printed beside its baseline from the
same run; nothing is asserted (``tests/integration/test_big_outbox.py`` checks behaviour).

1. ``claims``: beside a small (1k rows) and a big (``--rows``, 1M) outbox, once mostly
   delivered history and once a paused destination's pending backlog: the median
   ``claim_due(100)`` of 2,000 due rows, and ``Worker.flush()`` of 2,000 queued events
   through the sandbox. Big vs small is the ratio.
2. ``operators``: what ``relay status``, ``outbox list --status dead``, ``outbox list``,
   ``outbox show``, ``retry`` (one event, and every dead row) and ``prune``'s count cost,
   big vs small.
3. ``prune``: table and index sizes per million rows, then a prune of the whole delivered
   history while a worker claims and delivers: its claims' p50/p99/max beside the same
   claims with no prune running.
4. ``memory``: a real ``relay flush`` process drains ``--backlog`` (200k) queued events
   through Redis and the outbox into the sandbox: its RSS (``/proc/PID/status``) once the
   first 5% are delivered vs the highest it reached.

The outboxes are filled in one statement (``INSERT … SELECT generate_series`` on PostgreSQL,
a recursive CTE on SQLite), then analysed, as autovacuum or ``ANALYZE`` would leave a table
that grew over weeks.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, text

from bench.common import (
    Postgres,
    bench_settings,
    median,
    mixed_events,
    percentile,
    print_table,
    ratio,
    redis_server,
    start_postgres,
    summarize,
)
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.ops.admin import Admin
from relay.outbox import queries
from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.outbox.queries import Filters
from relay.outbox.store import Outbox, utcnow
from relay.queue.wire import NewEvent
from relay.settings import Settings
from relay.worker.loop import Worker

SMALL = 1_000
DUE = 2_000
"""Rows claimed (and events flushed) beside each outbox."""
DEAD_SHARE = 0.005
"""Of the history, rows dead (HTTP 404): what `outbox list --status dead` and retry read."""

# Rows of one destination and status, their times spread over the two days before now (so
# the rows a test adds later are due after all of them), ids in event_id order.
FILL_POSTGRES = """
INSERT INTO relay_outbox (destination, event_id, payload, status, attempts, next_attempt_at,
    last_status, last_error, enqueued_at, created_at, updated_at, delivered_at)
SELECT p.d, md5(p.d || p.s || g), json_build_object('vid', 'v' || g, 'value', g % 100,
        'currency', 'EUR', 'props', json_build_object('order', 'o-' || g)),
    p.s, 1, p.t0 + g * p.step, p.ls, p.le, p.t0 + g * p.step, p.t0 + g * p.step,
    p.t0 + g * p.step, CASE WHEN p.s = 'delivered' THEN p.t0 + g * p.step END
FROM generate_series(1, :rows) AS g, (
    SELECT CAST(:destination AS text) AS d, CAST(:status AS text) AS s,
        (now() AT TIME ZONE 'utc') - interval '2 days' AS t0,
        interval '1 day' / :rows AS step,
        CASE WHEN :status = 'dead' THEN 404 END AS ls,
        CASE WHEN :status = 'dead' THEN 'HTTP 404: unknown site' END AS le
) AS p
"""

FILL_SQLITE = """
WITH RECURSIVE g(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM g WHERE n < :rows)
INSERT INTO relay_outbox (destination, event_id, payload, status, attempts, next_attempt_at,
    last_status, last_error, enqueued_at, created_at, updated_at, delivered_at)
SELECT :destination, lower(hex(randomblob(16))), json_object('vid', 'v' || n,
        'value', n % 100, 'currency', 'EUR', 'props', json_object('order', 'o-' || n)),
    :status, 1, t, CASE WHEN :status = 'dead' THEN 404 END,
    CASE WHEN :status = 'dead' THEN 'HTTP 404: unknown site' END, t, t, t,
    CASE WHEN :status = 'delivered' THEN t END
FROM (SELECT n, strftime('%Y-%m-%d %H:%M:%f', 'now', '-2 days',
        printf('+%.3f seconds', n * 86400.0 / :rows)) || '000' AS t FROM g)
"""


@dataclass
class Env:
    home: Path
    redis_url: str
    sandbox: SandboxProcess
    postgres: Postgres | None
    runs: int = 0

    def database(self, backend: str) -> str:
        """A fresh, migrated outbox database."""
        self.runs += 1
        if backend == "postgresql":
            assert self.postgres is not None
            return self.postgres.fresh_url()
        url = f"sqlite:///{self.home / f'outbox-{self.runs}.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def settings(self, database_url: str, **extra: Any) -> Settings:
        self.runs += 1
        extra.setdefault("namespace", f"bench{self.runs}")
        return bench_settings(self.home, self.redis_url, database_url, self.sandbox.url, **extra)


# -- filling ---------------------------------------------------------------------------------


def fill(engine: Engine, destination: str, status: str, rows: int) -> None:
    statement = FILL_POSTGRES if engine.dialect.name == "postgresql" else FILL_SQLITE
    parameters = {"destination": destination, "status": status, "rows": rows}
    with engine.begin() as conn:
        conn.execute(text(statement), parameters)


def analyse(engine: Engine) -> None:
    """Statistics and the visibility map, as autovacuum leaves a table that grew slowly."""
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("VACUUM ANALYZE relay_outbox")
    else:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE")


def history(engine: Engine, rows: int, shape: str) -> None:
    """``rows`` rows beside the ones a run adds: ``delivered`` history of both APIs (and a
    few dead), or ``paused``: one paused destination's pending backlog (and a few dead)."""
    dead = max(1, int(rows * DEAD_SHARE))
    if shape == "delivered":
        fill(engine, "servoki", "delivered", (rows - dead) // 2)
        fill(engine, "datalook", "delivered", rows - dead - (rows - dead) // 2)
    else:
        fill(engine, "paused", "pending", rows - dead)
    fill(engine, "servoki", "dead", dead)
    analyse(engine)


@dataclass
class Outboxes:
    """One filled outbox per (backend, shape, size), built on first use."""

    env: Env
    big: int
    built: dict[tuple[str, str, int], str]
    sizes: dict[str, dict[str, float]]
    """Per backend: MiB per million rows of the table and each index, as filled."""

    def url(self, backend: str, shape: str, size: int) -> str:
        key = (backend, shape, size)
        if key not in self.built:
            url = self.env.database(backend)
            engine = make_engine(url)
            started = time.perf_counter()
            history(engine, size, shape)
            log(f"filled {backend} {shape} {size:,} rows in {time.perf_counter() - started:.1f}s")
            if shape == "delivered" and size == self.big:
                self.sizes[backend] = {
                    name: value * 1_000_000 / size / 2**20 for name, value in sizes(engine).items()
                }
            engine.dispose()
            self.built[key] = url
        return self.built[key]


def log(message: str) -> None:
    print(f"  … {message}", file=sys.stderr, flush=True)


# -- 1. claims -------------------------------------------------------------------------------


def claim_round_ms(url: str) -> float:
    """Median ms of ``claim_due(100)`` over 2,000 due rows, each round delivered after it."""
    engine = make_engine(url)
    box = Outbox(engine)
    now = utcnow()
    box.insert([NewEvent("servoki", f"claim-{i}", {"n": i}, now) for i in range(DUE)])
    times: list[float] = []
    while True:
        started = time.perf_counter()
        claims = box.claim_due(100, 60, ["servoki"])
        times.append(time.perf_counter() - started)
        if not claims:
            break
        for claim in claims:
            box.mark_delivered(claim, 202)
    engine.dispose()
    return median(times) * 1000


def flush_seconds(env: Env, url: str) -> float:
    """Seconds ``Worker.flush()`` takes to deliver 2,000 queued events (half each API)."""
    settings = env.settings(url)
    worker = Worker(settings)
    enqueuer = Enqueuer(settings)
    enqueuer.push([enqueuer.encode(d, p)[1] for d, p in mixed_events(DUE)])
    started = time.perf_counter()
    worker.flush(max_wait=5.0)
    took = time.perf_counter() - started
    worker.close()
    enqueuer.close()
    return took


def bench_claims(outboxes: Outboxes, backends: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    big = outboxes.big
    for backend in backends:
        for shape in ("delivered", "paused"):
            small_url = outboxes.url(backend, shape, SMALL)
            big_url = outboxes.url(backend, shape, big)
            # Alternate small and big, twice, and keep each side's best: the machine is shared.
            claims: dict[int, list[float]] = {SMALL: [], big: []}
            flushes: dict[int, list[float]] = {SMALL: [], big: []}
            for _ in range(2):
                for size, url in ((SMALL, small_url), (big, big_url)):
                    claims[size].append(claim_round_ms(url))
                    flushes[size].append(flush_seconds(outboxes.env, url))
            label = f"{backend}, {shape}"
            small_claim, big_claim = min(claims[SMALL]), min(claims[big])
            small_flush, big_flush = min(flushes[SMALL]), min(flushes[big])
            summarize(
                f"claim_due(100) beside {big:,} rows, {label}",
                f"{big_claim:.2f} ms",
                f"{small_claim:.2f} ms beside {SMALL:,}",
                ratio(big_claim, small_claim),
                "<= 2x",
            )
            summarize(
                f"flush {DUE:,} events beside {big:,} rows, {label}",
                f"{big_flush:.2f} s",
                f"{small_flush:.2f} s beside {SMALL:,}",
                ratio(big_flush, small_flush),
                "<= 2x",
            )
            rows.append(
                [
                    f"claim_due(100), {label}",
                    f"{small_claim:.2f} ms",
                    f"{big_claim:.2f} ms",
                    ratio(big_claim, small_claim),
                ]
            )
            rows.append(
                [
                    f"flush {DUE:,} events, {label}",
                    f"{small_flush:.2f} s",
                    f"{big_flush:.2f} s",
                    ratio(big_flush, small_flush),
                ]
            )
    return rows


# -- 2. operator commands ----------------------------------------------------------------------


def operator_calls(admin: Admin, engine: Engine) -> dict[str, Callable[[], object]]:
    """What each CLI command asks the outbox, through the same facade the CLI uses."""
    with engine.connect() as conn:
        dead_id = conn.exec_driver_sql(
            "SELECT event_id FROM relay_outbox WHERE status = 'dead' ORDER BY id LIMIT 1"
        ).scalar_one()
    dead = [dead_id]

    def retry_one() -> int:
        selection = admin.select(dead, None, ("dead", "discarded"))
        return admin.retry(selection)

    def retry_all_dead() -> int:
        return admin.retry(admin.select([], None, ("dead",), all_dead=True))

    return {
        "relay status": lambda: admin.status(),
        "outbox list --status dead": lambda: admin.list_rows(Filters(["dead"]), 50),
        "outbox list": lambda: admin.list_rows(Filters(), 50),
        "outbox list --destination servoki": lambda: admin.list_rows(
            Filters(destination="servoki"), 50
        ),
        "outbox show": lambda: admin.events(dead_id, None),
        "outbox retry EVENT_ID": retry_one,
        "outbox retry --all-dead": retry_all_dead,
        "outbox prune (count)": lambda: admin.prunable(3600 * 36),
        "outbox prune (one batch of 1,000)": lambda: one_batch(admin),
    }


class _FirstBatchDone(Exception):
    pass


def one_batch(admin: Admin) -> None:
    """The first batch of a prune of the whole delivered history (the rest is section 3)."""

    def stop(_: int) -> None:
        raise _FirstBatchDone

    with contextlib.suppress(_FirstBatchDone):
        admin.prune(3600, batch=1000, progress=stop)


def time_operators(env: Env, url: str) -> dict[str, float]:
    """Seconds each command took (best of two; retries and prunes run once, on their own
    rows), and ``relay status`` as an operator runs it: a process, imports included."""
    settings = env.settings(url)
    admin = Admin(settings, start_embedded=False, check_schema=False)
    engine = make_engine(url)
    calls = operator_calls(admin, engine)
    command = [sys.executable, "-m", "relay.cli", "status", "--json"]
    calls["relay status --json (a process)"] = lambda: subprocess.run(
        command, env=worker_env(settings), capture_output=True, check=True
    )
    took: dict[str, float] = {}
    for name, call in calls.items():
        runs = 1 if "retry" in name or "prune (one" in name else 2
        best = float("inf")
        for _ in range(runs):
            started = time.perf_counter()
            call()
            best = min(best, time.perf_counter() - started)
        took[name] = best
    admin.close()
    engine.dispose()
    return took


def bench_operators(outboxes: Outboxes, backends: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for backend in backends:
        for shape in ("delivered", "paused"):
            small = time_operators(outboxes.env, outboxes.url(backend, shape, SMALL))
            big = time_operators(outboxes.env, outboxes.url(backend, shape, outboxes.big))
            slowest = max(big, key=lambda name: big[name])
            summarize(
                f"slowest operator command beside {outboxes.big:,} rows, {backend}, {shape}: "
                f"{slowest}",
                f"{big[slowest] * 1000:.0f} ms",
                f"{small[slowest] * 1000:.0f} ms beside {SMALL:,}",
                ratio(big[slowest], small[slowest]),
                "< 1 s",
            )
            for name in small:
                rows.append(
                    [
                        f"{name}, {backend}, {shape}",
                        f"{small[name] * 1000:.1f} ms",
                        f"{big[name] * 1000:.1f} ms",
                        ratio(big[name], small[name]),
                    ]
                )
    return rows


# -- 3. sizes and prune under load -------------------------------------------------------------


def sizes(engine: Engine) -> dict[str, int]:
    """Bytes of the outbox table and each of its indexes."""
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            names = conn.exec_driver_sql(
                "SELECT indexrelid::regclass::text FROM pg_index "
                "WHERE indrelid = 'relay_outbox'::regclass"
            ).scalars()
            out = {
                "table (with TOAST)": conn.exec_driver_sql(
                    "SELECT pg_table_size('relay_outbox')"
                ).scalar_one()
            }
            for name in sorted(names):
                out[name] = conn.exec_driver_sql(f"SELECT pg_relation_size('{name}')").scalar_one()
            return out
        found = conn.exec_driver_sql(
            "SELECT name, SUM(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master "
            "WHERE tbl_name = 'relay_outbox') GROUP BY name"
        ).all()
    return {("table" if n == "relay_outbox" else n): int(b) for n, b in found}


def bench_sizes(outboxes: Outboxes, backends: list[str]) -> list[list[object]]:
    rows: list[list[object]] = []
    for backend in backends:
        outboxes.url(backend, "delivered", outboxes.big)
        measured = outboxes.sizes[backend]
        for name, size in measured.items():
            rows.append([f"{backend}: {name}", f"{size:,.1f} MiB"])
        total = sum(measured.values())
        rows.append([f"{backend}: all", f"{total:,.1f} MiB"])
        summarize(f"outbox size per million rows, {backend}", f"{total:,.0f} MiB", "-", "-")
    return rows


class Claimer(threading.Thread):
    """A worker's dispatch side: 20 new events a round, claimed and delivered, each claim
    timed, until stopped."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(url, statement_timeout=30)
        self.box = Outbox(self.engine)
        self.times: list[float] = []
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        while not self.stop.is_set():
            now = utcnow()
            events = [
                NewEvent("servoki", f"live-{self.sent + i}", {"n": i}, now) for i in range(20)
            ]
            self.sent += len(events)
            self.box.insert(events)
            started = time.perf_counter()
            claims = self.box.claim_due(20, 60, ["servoki"])
            self.times.append(time.perf_counter() - started)
            for claim in claims:
                self.box.mark_delivered(claim, 202)
            time.sleep(0.005)

    def finish(self) -> list[float]:
        self.stop.set()
        self.join()
        self.engine.dispose()
        return self.times


def claims_for(url: str, seconds: float) -> list[float]:
    claimer = Claimer(url)
    claimer.start()
    time.sleep(seconds)
    return claimer.finish()


def bench_prune(outboxes: Outboxes, backends: list[str]) -> list[list[object]]:
    """Prune the whole delivered history of the big outbox while a worker claims."""
    rows: list[list[object]] = []
    for backend in backends:
        url = outboxes.url(backend, "delivered", outboxes.big)
        quiet = claims_for(url, 5.0)
        engine = make_engine(url)
        claimer = Claimer(url)
        claimer.start()
        started = time.perf_counter()
        pruned = queries.prune(engine, 3600 * 12)
        took = time.perf_counter() - started
        busy = claimer.finish()
        engine.dispose()
        outboxes.built.pop((backend, "delivered", outboxes.big))  # emptied: rebuild if asked

        def ms(values: list[float], q: float) -> str:
            return f"{percentile(values, q) * 1000:.1f}"

        summarize(
            f"claim max while prune deletes {pruned:,} rows ({pruned / took:,.0f}/s), {backend}",
            f"{ms(busy, 100)} ms",
            f"{ms(quiet, 100)} ms with no prune",
            ratio(max(busy), max(quiet)),
            "no long waits",
        )

        rows.append(
            [
                f"{backend}: claims, no prune",
                len(quiet),
                ms(quiet, 50),
                ms(quiet, 99),
                ms(quiet, 100),
                "",
            ]
        )
        rows.append(
            [
                f"{backend}: claims during prune",
                len(busy),
                ms(busy, 50),
                ms(busy, 99),
                ms(busy, 100),
                f"{pruned:,} rows in {took:.1f}s ({pruned / took:,.0f}/s)",
            ]
        )
    return rows


# -- 4. a worker's memory ------------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB (empty once it has exited)."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment of a relay process sharing ``settings`` (keys in clear: never print)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(settings.kind_environment())
    env.update(
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
        RELAY_HOME=str(settings.home),
        RELAY_NAMESPACE=settings.namespace,
        RELAY_REDIS_URL=settings.resolved_redis_url,
        RELAY_DATABASE_URL=settings.resolved_database_url,
    )
    return env


def bench_memory(env: Env, backends: list[str], backlog: int) -> list[list[object]]:
    rows: list[list[object]] = []
    for backend in backends:
        url = env.database(backend)
        settings = env.settings(url)
        enqueuer = Enqueuer(settings)
        events = mixed_events(backlog)
        for start in range(0, backlog, 1000):
            chunk = events[start : start + 1000]
            enqueuer.push([enqueuer.encode(d, p)[1] for d, p in chunk])
        enqueuer.close()
        env.sandbox.reset()
        engine = make_engine(url)
        proc = subprocess.Popen(
            [sys.executable, "-m", "relay.cli", "flush", "--max-wait", "5"],
            env=worker_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.perf_counter()
        samples: list[tuple[int, int]] = []  # (delivered so far, RSS KiB)
        peak = 0
        while proc.poll() is None:
            status = proc_status(proc.pid)
            peak = max(peak, status.get("VmHWM", 0))
            with engine.connect() as conn:
                done = conn.exec_driver_sql(
                    "SELECT count(*) FROM relay_outbox WHERE status = 'delivered'"
                ).scalar_one()
            if status:
                samples.append((int(done), status["VmRSS"]))
            time.sleep(0.5)
        took = time.perf_counter() - started
        engine.dispose()
        warm = [rss for done, rss in samples if done >= backlog * 0.05]
        start_rss = warm[0] if warm else (samples[0][1] if samples else 0)
        max_rss = max([rss for _, rss in samples] + [peak])
        last = samples[-1][1] if samples else 0
        tenths = [
            next((rss for done, rss in samples if done >= backlog * step / 10), last)
            for step in range(1, 11)
        ]
        summarize(
            f"worker max RSS draining {backlog:,} events, {backend}",
            f"{max_rss / 1024:.1f} MiB",
            f"{start_rss / 1024:.1f} MiB at 5% delivered",
            ratio(max_rss, start_rss),
            "<= 1.20x",
        )
        rows.append(
            [
                f"relay flush {backlog:,} events, {backend}",
                f"{start_rss / 1024:.1f} MiB",
                f"{max_rss / 1024:.1f} MiB",
                ratio(max_rss, start_rss),
                f"{backlog / took:,.0f}/s, exit {proc.returncode}",
            ]
        )
        rows.append(
            [
                "  RSS at each tenth delivered (MiB)",
                " ".join(f"{rss / 1024:.0f}" for rss in tenths),
                "",
                "",
                "",
            ]
        )
    return rows


# -- main ----------------------------------------------------------------------------------------

SECTIONS = ("claims", "operators", "sizes", "prune", "memory")


@dataclass
class Plan:
    rows: int
    backlog: int
    sections: list[str]


def parse_args(argv: list[str] | None) -> Plan:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000, help="the big outbox's rows")
    parser.add_argument("--backlog", type=int, default=200_000, help="events the worker drains")
    parser.add_argument("--quick", action="store_true", help="100k rows, a 20k backlog")
    parser.add_argument("--only", default=",".join(SECTIONS), help="comma-separated sections")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.backlog = 100_000, 20_000
    return Plan(args.rows, args.backlog, [s for s in args.only.split(",") if s])


@contextlib.contextmanager
def services(home: Path) -> Iterator[Env]:
    with redis_server(home) as redis:
        sandbox = SandboxProcess(servoki_limit=None, datalook_limit=None).start()
        postgres = start_postgres(home / "pg")
        try:
            yield Env(home, redis.unix_url, sandbox, postgres)
        finally:
            sandbox.stop()
            if postgres is not None:
                postgres.stop()


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    home = Path(tempfile.mkdtemp(prefix="relay-bench-outbox-"))
    load = os.getloadavg()
    print(
        f"bench.outbox: big outbox {plan.rows:,} rows vs {SMALL:,}, backlog {plan.backlog:,}; "
        f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at start"
    )
    started = time.perf_counter()
    try:
        with services(home) as env:
            backends = ["sqlite"] + (["postgresql"] if env.postgres is not None else [])
            outboxes = Outboxes(env, plan.rows, {}, {})
            head = ["", f"beside {SMALL:,} rows", f"beside {plan.rows:,} rows", "ratio"]
            if "claims" in plan.sections:
                rows = bench_claims(outboxes, backends)
                print_table("1. claims beside a small and a big outbox (best of 2)", head, rows)
            if "operators" in plan.sections:
                rows = bench_operators(outboxes, backends)
                print_table("2. operator commands (best of 2)", head, rows)
            if "sizes" in plan.sections:
                rows = bench_sizes(outboxes, backends)
                print_table("3a. outbox size per million rows", ["", "size"], rows)
            if "prune" in plan.sections:
                rows = bench_prune(outboxes, backends)
                header = ["", "claims", "p50 ms", "p99 ms", "max ms", "prune"]
                print_table("3b. claims while prune deletes the delivered history", header, rows)
            if "memory" in plan.sections:
                rows = bench_memory(env, backends, plan.backlog)
                header = ["", "RSS at 5% delivered", "max RSS", "ratio", "rate"]
                print_table("4. a worker's memory over a backlog", header, rows)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"\ntook {time.perf_counter() - started:.0f}s; load average {load[0]:.1f} at the end "
        "(others' work on this machine makes every figure noisier)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
