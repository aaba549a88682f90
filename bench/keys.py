"""Many-keys benchmark: how much of N DataLook keys' aggregate limit one host delivers.

    .venv/bin/python -m bench.keys [--keys 20] [--seconds 30] [--workers 2] [--scale 1 5 10 20 40]

Configured as a user would: one ``[destination_sets.bench]`` table and a mode-600 keys file
(``RELAY_CONFIG``), N keys ``dl_live_k<i>_…`` of 500/10 s each (aggregate N x 50/s). Each key
gets a backlog in the outbox (PostgreSQL from pgserver when installed, else SQLite) larger than
the run can send. Then ``--workers`` processes run ``Worker.pump`` — what each prefork child of
the Procfile's ``celery -A tasks worker --concurrency 2`` runs for every ``relay.pump`` wake-up —
for ``--seconds`` against the sandbox, which enforces 500/10 s per key id (sliding window,
429 + Retry-After) and logs every arrival.

Printed per key count, against its baseline (the aggregate limit and the limiter's ceiling,
the most the buckets may grant under the jitter margin):

- sustained: accepted arrivals per second in the steady part (after the first 2 s);
- of limit / of ceiling: that rate over the aggregate limit, and over the ceiling;
- per-key share, min/max: each key's steady rate over its own limit;
- peak window: the most arrivals one key saw in any 10 s window (limit 500), and the 429s;
- worker CPU: the worker processes' CPU seconds per second of run (cores), and per 1,000
  events; the machine's busy fraction (all processes, other users included) says how loaded
  the box was.

Nothing is asserted: tests check behaviour, this prints speed.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import print_table, redis_server, start_postgres, summarize
from bench.limits import peak
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.limiter import RateLimit, RedisLimiter, plan
from relay.settings import Settings, load_settings
from relay.worker.loop import Worker

LIMIT = "500/10s"
WARMUP = 2.0
"""Seconds at the start left out of the steady rate: workers start, first claims."""


def key_of(i: int) -> str:
    return f"dl_live_k{i}_s3cr3tbenchkey{i:04d}"


def write_config(work: Path, keys: int, sandbox_url: str) -> Path:
    """The user's files: one destination set, one keys file readable by its owner only."""
    secrets = work / f"keys-{keys}.toml"
    secrets.write_text("".join(f't{i:03d} = "{key_of(i)}"\n' for i in range(keys)))
    secrets.chmod(0o600)
    config = work / f"relay-{keys}.toml"
    config.write_text(
        f'[destination_sets.bench]\nkind = "datalook"\nurl = "{sandbox_url}"\n'
        f'rate_limit = "{LIMIT}"\nkeys_file = "{secrets}"\n'
    )
    return config


def environment(
    config: Path, redis_url: str, db: str, home: Path, namespace: str, extra: dict[str, str]
) -> None:
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        del os.environ[name]
    os.environ.update({f"RELAY_{name.upper()}": value for name, value in extra.items()})
    os.environ.update(
        RELAY_CONFIG=str(config),
        RELAY_REDIS_URL=redis_url,
        RELAY_DATABASE_URL=db,
        RELAY_HOME=str(home),
        RELAY_NAMESPACE=namespace,
    )


def fill(settings: Settings, per_key: int) -> int:
    """Enqueue ``per_key`` events for every tenant and drain them into the outbox."""
    names = list(settings.destination_configs())
    enqueuer = Enqueuer(settings)
    try:
        for name in names:
            page = {"event_name": "click", "page_path": "/", "properties": {"n": 0}}
            batch = [
                enqueuer.encode(name, {**page, "properties": {"n": i}})[1] for i in range(per_key)
            ]
            enqueuer.push(batch)
    finally:
        enqueuer.close()
    worker = Worker(settings)
    total = 0
    try:
        while True:
            drained = worker.drain()
            total += drained.inserted
            if not drained.taken:
                return total
    finally:
        worker.close()


def _worker(seconds: float, out: str, ready: Any, go: Any, profile: str | None) -> None:
    """One worker process, as a Celery prefork child runs it: its own Worker, pumping."""
    logging.basicConfig(level=logging.WARNING, format="worker: %(levelname)s %(message)s")
    worker = Worker(load_settings())
    try:
        ready.set()
        go.wait(120)
        if profile:
            # The steady middle of the run, in py-spy's raw (collapsed stacks) format.
            spy = [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(os.getpid())]
            spy += ["-r", "200"]
            spy += ["-d", str(int(seconds / 2)), "-f", "raw", "-o", f"{profile}.{os.getpid()}"]
            # --gil: samples of the thread holding the GIL, i.e. where the CPU goes.
            subprocess.Popen([*spy, "--nonblocking", "--gil"], stdout=subprocess.DEVNULL)
        before = resource.getrusage(resource.RUSAGE_SELF)
        report = worker.pump(seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        worker.close()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    stats = worker.limiter.stats if isinstance(worker.limiter, RedisLimiter) else None
    missed = (stats.missed + stats.stale if stats else 0) + worker.dispatcher.slots_fell_behind
    result = {"cpu": cpu, "delivered": report.delivered, "missed": missed, "held": report.held}
    Path(out).write_text(json.dumps(result))


def run(
    keys: int,
    seconds: float,
    workers: int,
    work: Path,
    sandbox: SandboxProcess,
    db: str,
    extra: dict[str, str],
    profile: str | None = None,
) -> dict[str, Any]:
    """One run with ``keys`` keys; one result row."""
    sandbox.reset()
    directory = work / f"keys-{keys}"
    directory.mkdir()
    budget = plan(RateLimit.parse(LIMIT), Settings.model_fields["limit_jitter"].default)
    with redis_server(directory) as redis:
        config = write_config(directory, keys, sandbox.url)
        environment(config, redis.unix_url, db, directory / "home", f"keys{keys}", extra)
        settings = load_settings()
        # More than the run can send: no key's backlog runs dry.
        fill(settings, int(1.3 * budget.rate * (seconds + 5)) + 50)
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        readies = [ctx.Event() for _ in range(workers)]
        outs = [str(directory / f"w{i}.json") for i in range(workers)]
        procs = [
            ctx.Process(target=_worker, args=(seconds, out, ready, go, profile))
            for out, ready in zip(outs, readies, strict=True)
        ]
        for proc in procs:
            proc.start()
        for ready in readies:
            ready.wait(120)
        busy_before = psutil.cpu_times()
        go.set()
        started = time.monotonic()
        for proc in procs:
            proc.join(seconds + 120)
        elapsed = time.monotonic() - started
        busy_after = psutil.cpu_times()
    log = sandbox.requests("datalook")
    accepted = sorted((r["t"], r["scope"]) for r in log if r["status"] == 204)
    throttled = sum(1 for r in log if r["status"] == 429)
    first, last = accepted[0][0], accepted[-1][0]
    start = first + WARMUP
    span = last - start
    steady = Counter(scope for t, scope in accepted if t >= start)
    per_key_limit = budget.limit.limit / budget.limit.window
    shares = [steady.get(f"k{i}", 0) / span / per_key_limit for i in range(keys)]
    by_scope: dict[str, list[float]] = {}
    for t, scope in accepted:
        by_scope.setdefault(scope, []).append(t)
    peaks = [peak(times, budget.limit.window) for times in by_scope.values()]
    results = [json.loads(Path(out).read_text()) for out in outs if Path(out).exists()]
    cpu = sum(r["cpu"] for r in results)
    idle = lambda t: t.idle + getattr(t, "iowait", 0.0)  # noqa: E731
    total = sum(busy_after) - sum(busy_before)
    machine = 1 - (idle(busy_after) - idle(busy_before)) / total if total else float("nan")
    rate = sum(steady.values()) / span
    return {
        "keys": keys,
        "workers": workers,
        "limit": keys * per_key_limit,
        "ceiling": keys * budget.rate,
        "rate": rate,
        "min_share": min(shares),
        "max_share": max(shares),
        "peak": max(peaks, default=0),
        "rate_limited": throttled,
        "delivered": len(accepted),
        "worker_cpu": cpu / elapsed,
        "cpu_per_1000": 1000 * cpu / len(accepted) if accepted else float("nan"),
        "machine": machine,
        "missed": sum(r["missed"] for r in results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.keys", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--keys", type=int, default=20, help="DataLook keys (default 20)")
    parser.add_argument("--scale", type=int, nargs="+", help="several key counts, one run each")
    parser.add_argument("--seconds", type=float, default=30.0, help="per run (default 30)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a RELAY_* setting for the workers, e.g. --set SEND_CONCURRENCY=16",
    )
    parser.add_argument("--profile", help="py-spy each worker into PROFILE.<pid> (raw format)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="relay-keys-"))
    postgres = start_postgres(work / "pg")
    rows: list[dict[str, Any]] = []
    saved = dict(os.environ)
    try:
        with SandboxProcess(datalook_limit=LIMIT) as sandbox:
            for keys in args.scale or [args.keys]:
                db = postgres.fresh_url() if postgres else f"sqlite:///{work}/outbox{keys}.db"
                extra = dict(item.split("=", 1) for item in args.set)
                rows.append(
                    run(keys, args.seconds, args.workers, work, sandbox, db, extra, args.profile)
                )
                print(f"{keys} keys: done", file=sys.stderr)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if postgres:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0]
    print_table(
        f"{LIMIT} per key, {args.workers} worker processes, {args.seconds:g}s per run, "
        f"{'PostgreSQL' if postgres else 'SQLite'} outbox, {os.cpu_count()} cores "
        f"(load average {load:.1f} at the end)",
        ["keys", "limit/s", "ceiling/s", "sustained/s", "of limit", "of ceiling",
         "key share min/max", "peak window", "429s", "worker CPU (cores)", "CPU s/1000 ev",
         "machine busy", "missed slots"],
        [
            [r["keys"], f"{r['limit']:.0f}", f"{r['ceiling']:.0f}", f"{r['rate']:.1f}",
             f"{r['rate'] / r['limit']:.1%}", f"{r['rate'] / r['ceiling']:.1%}",
             f"{r['min_share']:.1%}/{r['max_share']:.1%}", f"{r['peak']}/500",
             r["rate_limited"], f"{r['worker_cpu']:.2f}", f"{r['cpu_per_1000']:.2f}",
             f"{r['machine']:.0%}", r["missed"]]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:
        summarize(
            f"{r['keys']} DataLook keys, backlog on each: sustained ({args.workers} workers)",
            f"{r['rate']:.0f}/s, {r['rate_limited']} 429s, worker CPU {r['worker_cpu']:.2f} cores",
            f"aggregate limit {r['limit']:.0f}/s",
            f"{r['rate'] / r['limit']:.1%}",
            "≥ 95%, 0 429s" if r["keys"] == 20 else "report",
        )
        summarize(
            f"{r['keys']} DataLook keys: least / most served key",
            f"{r['min_share']:.1%} / {r['max_share']:.1%}",
            "each key's limit",
            f"{r['min_share'] / r['max_share']:.2f}" if r["max_share"] else "n/a",
            "no key < 90% while others above" if r["keys"] == 20 else "report",
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
