"""Rate-limit benchmark: how much of each documented limit the shared buckets deliver.

    .venv/bin/python bench/limits.py [--seconds 70] [--workers 1 4] [--jitter 0.1]

The sandbox enforces the documented limits strictly (600/60s per IP, 500/10s per key, sliding
windows, 429 + Retry-After) and records every arrival. For each worker count the benchmark
enqueues a backlog far above what the run can send on both APIs at once, runs that many
``Worker.pump`` processes for ``--seconds``, then prints, per API:

- sustained rate as a fraction of the limit: arrivals after the initial burst, per window, over L
  (whole run, and its second half: the first one also drains the backlog out of Redis);
- the most arrivals the server saw in any one window, and its 429s;
- slot → arrival delay (the jitter the budget must allow for), from the workers' debug lines;
- slots the limiter threw away because a thread woke too late to use them.

Nothing is asserted; run it long enough to cover several windows (Servoki's is 60 s).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    bench_settings,
    percentile,
    print_table,
    redis_server,
    servoki_event,
    start_postgres,
    summarize,
)
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.limiter import RateLimit, RedisLimiter, plan
from relay.settings import Settings
from relay.worker.loop import Worker

LIMITS = {"servoki": "600/60s", "datalook": "500/10s"}
_SEND = re.compile(r"send event_id=(\S+) slot=([0-9.]+) at=([0-9.]+)")


def _worker(settings: Settings, seconds: float, out: str, ready: Any, go: Any) -> None:
    """One worker process: pump, log every send's slot, then write its limiter's stats."""
    slots = open(out + ".slots", "w")  # noqa: SIM115 - closed below, after the pump
    handler = logging.StreamHandler(slots)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: record.getMessage().startswith("send "))
    delivery = logging.getLogger("relay.delivery")
    delivery.setLevel(logging.DEBUG)
    delivery.addHandler(handler)
    logging.basicConfig(level=logging.WARNING, format="worker: %(levelname)s %(message)s")
    for console in logging.getLogger().handlers:
        console.setLevel(logging.WARNING)
    worker = Worker(settings)
    try:
        ready.set()
        go.wait(120)
        worker.pump(seconds)
    finally:
        worker.close()
        handler.close()
        slots.close()
    limiter = worker.limiter
    stats: dict[str, Any] = {}
    if isinstance(limiter, RedisLimiter):
        stats = {**asdict(limiter.stats), "write_late": list(limiter.stats.write_late)}
    Path(out + ".stats").write_text(json.dumps(stats))


def enqueue_backlog(settings: Settings, counts: dict[str, int]) -> None:
    enqueuer = Enqueuer(settings)
    try:
        items = enqueuer.encode_many(
            "servoki", [servoki_event(i) for i in range(counts["servoki"])]
        )
        enqueuer.push(items[1])
        batch: list[bytes] = []
        for i in range(counts["datalook"]):
            eid = f"dl-{i}"
            page = {"event_name": "click", "page_path": "/", "properties": {"eid": eid}}
            batch.append(enqueuer.encode("datalook", page, eid)[1])
            if len(batch) == 1000:
                enqueuer.push(batch)
                batch = []
        enqueuer.push(batch)
    finally:
        enqueuer.close()


def peak(times: list[float], window: float) -> int:
    """Most arrivals inside one sliding window (now - window, now], as the server counts."""
    most, first = 0, 0
    for last, t in enumerate(times):
        while times[first] <= t - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def run(
    workers: int, seconds: float, jitter: float, work: Path, sandbox: SandboxProcess, db: str
) -> list[dict[str, Any]]:
    """One run with ``workers`` processes; one result row per API."""
    sandbox.reset()
    (work / f"redis-{workers}").mkdir()
    with redis_server(work / f"redis-{workers}") as redis:
        settings = bench_settings(
            work / "home",
            redis.unix_url,
            db,
            sandbox.url,
            namespace=f"limits{workers}",
            servoki_rate_limit=LIMITS["servoki"],
            datalook_rate_limit=LIMITS["datalook"],
            limit_jitter=jitter,
        )
        budgets = {api: plan(RateLimit.parse(text), jitter) for api, text in LIMITS.items()}
        # Twice what the run could possibly send, so the backlog never runs dry.
        backlog = {api: int(2 * b.rate * seconds) + 100 for api, b in budgets.items()}
        enqueue_backlog(settings, backlog)
        ctx = multiprocessing.get_context("spawn")
        go = ctx.Event()
        readies = [ctx.Event() for _ in range(workers)]
        outs = [str(work / f"w{workers}-{i}") for i in range(workers)]
        procs = [
            ctx.Process(target=_worker, args=(settings, seconds, out, ready, go))
            for out, ready in zip(outs, readies, strict=True)
        ]
        for proc in procs:
            proc.start()
        for ready in readies:
            ready.wait(120)
        go.set()
        for proc in procs:
            proc.join(seconds + 120)
    slots: dict[str, tuple[float, float]] = {}
    stats: dict[str, float] = {}
    write_late: list[float] = []
    for out in outs:
        for line in Path(out + ".slots").read_text().splitlines():
            match = _SEND.match(line)
            if match:
                slots[match.group(1)] = (float(match.group(2)), float(match.group(3)))
        for name, value in json.loads(Path(out + ".stats").read_text() or "{}").items():
            if name == "write_late":
                write_late += value
                continue
            merge = max if name == "max_late" else sum
            stats[name] = merge((stats.get(name, 0), value))
    server = sandbox.stats()
    rows = []
    for api, budget in budgets.items():
        limit = budget.limit
        log = sandbox.requests(api)
        times = sorted(r["t"] for r in log if r["status"] != 429)
        # Sustained: arrivals after the initial burst of `capacity`, over the time they took.
        span = times[-1] - times[0] if len(times) > 1 else float("nan")
        rate = (len(times) - budget.capacity) / span
        middle = times[0] + span / 2
        second_half = sum(1 for t in times if t > middle) / (times[-1] - middle)
        events = sandbox.events(api)
        key = "event_id" if api == "servoki" else None
        delays, writes = [], []
        for event in events:
            eid = event["body"][key] if key else event["body"]["properties"]["eid"]
            if eid in slots:
                slot, sent = slots[eid]
                delays.append(event["t"] - slot)
                writes.append(sent - slot)  # logged at the request's first byte
        rows.append(
            {
                "api": api,
                "limit": str(limit),
                "workers": workers,
                "seconds": round(span, 1),
                "sent": len(times),
                "rate": rate,
                "fraction": rate * limit.window / limit.limit,
                "second_half": second_half * limit.window / limit.limit,
                "ceiling": budget.utilisation,
                "peak": peak(times, limit.window),
                "server_peak": server[api]["peak_window"],
                "rate_limited": server[api]["rate_limited"],
                "delay_p50_ms": 1000 * percentile(delays, 50),
                "delay_p99_ms": 1000 * percentile(delays, 99),
                "delay_max_ms": 1000 * max(delays, default=float("nan")),
                "jitter_ms": 1000 * (max(delays) - min(delays)) if delays else float("nan"),
                "write_p99_ms": 1000 * percentile(writes, 99),
                "write_max_ms": 1000 * max(writes, default=float("nan")),
                "write_all_max_ms": 1000 * max(write_late, default=float("nan")),
                "missed": int(stats.get("missed", 0)),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/limits.py", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=70.0, help="per run (default 70)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--jitter", type=float, default=None, help="RELAY_LIMIT_JITTER")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    jitter = (
        args.jitter if args.jitter is not None else Settings.model_fields["limit_jitter"].default
    )
    work = Path(tempfile.mkdtemp(prefix="relay-limits-"))
    postgres = start_postgres(work / "pg")
    rows: list[dict[str, Any]] = []
    try:
        with SandboxProcess(
            servoki_limit=LIMITS["servoki"], datalook_limit=LIMITS["datalook"]
        ) as sandbox:
            for workers in args.workers:
                db = postgres.fresh_url() if postgres else f"sqlite:///{work}/outbox{workers}.db"
                started = time.monotonic()
                rows += run(workers, args.seconds, jitter, work, sandbox, db)
                print(f"{workers} worker(s): {time.monotonic() - started:.0f}s", file=sys.stderr)
    finally:
        if postgres:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)
    for api, text in LIMITS.items():
        print(f"{api} budget: {plan(RateLimit.parse(text), jitter)} (jitter margin {jitter}s)")
    print_table(
        f"Delivered against strict sliding windows ({args.seconds:g}s per run, "
        f"{'PostgreSQL' if postgres else 'SQLite'} outbox)",
        ["api", "limit", "workers", "sent", "sustained", "of limit", "2nd half", "ceiling",
         "peak window", "429s", "slot→arrival p50/p99/max ms", "slot→write p99/max ms",
         "missed slots"],
        [
            [r["api"], r["limit"], r["workers"], r["sent"], f"{r['rate']:.2f}/s",
             f"{r['fraction']:.1%}", f"{r['second_half']:.1%}", f"{r['ceiling']:.1%}",
             f"{r['peak']}/{r['limit'].split('/')[0]}",
             r["rate_limited"],
             f"{r['delay_p50_ms']:.1f}/{r['delay_p99_ms']:.1f}/{r['delay_max_ms']:.1f}",
             f"{r['write_p99_ms']:.1f}/{r['write_max_ms']:.1f}",
             r["missed"]]
            for r in rows
        ],
    )  # fmt: skip
    for r in rows:
        summarize(
            f"{r['api']} at its documented limit, {r['workers']} worker(s): sustained",
            f"{r['rate']:.2f}/s, {r['rate_limited']} 429s, "
            f"slot→write p99 {r['write_p99_ms']:.0f} ms",
            f"limit {r['limit']}",
            f"{r['fraction']:.1%}",
            "the limit, 0 429s",
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
