"""Every benchmark in one run, then one table: ``python -m bench [--quick] [--only a,b]``.

Each benchmark starts its own services (Redis, PostgreSQL, the sandbox, real servers), prints
its own detailed tables, and adds its headline figures, each beside a baseline measured in the
same run, to the summary printed at the end with the machine and how long each part took. The
README's "Performance" table is that summary. Nothing is asserted: the tests check behaviour.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import e2e, keys, limits, outbox, transactional, web
from bench.common import FIGURES, print_table

Main = Callable[[list[str] | None], int]

# name: (main, arguments for a full run, arguments for --quick)
BENCHES: dict[str, tuple[Main, list[str], list[str]]] = {
    "e2e": (e2e.main, [], ["--quick"]),
    "web": (web.main, [], ["--quick"]),
    "transactional": (transactional.main, [], ["--events", "30"]),
    "limits": (limits.main, ["--seconds", "70"], ["--seconds", "25", "--workers", "2"]),
    "keys": (keys.main, ["--scale", "1", "10", "20", "40", "--seconds", "30"], ["--seconds", "15"]),
    "outbox": (outbox.main, [], ["--quick"]),
}


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}, "
        f"load average {load}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs of each (~6 min)")
    parser.add_argument("--only", default=",".join(BENCHES), help="comma-separated benchmarks")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(BENCHES))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    started = datetime.now(UTC)
    print(f"python -m bench{' --quick' if args.quick else ''}: {machine()}")
    took: list[str] = []
    failed: list[str] = []
    for name in chosen:
        run, full, quick = BENCHES[name]
        began = time.monotonic()
        print(f"\n=== bench.{name} {' '.join(quick if args.quick else full)}", flush=True)
        try:
            run(quick if args.quick else full)
        except Exception:  # one broken benchmark must not hide the others' figures
            traceback.print_exc()
            failed.append(name)
        took.append(f"{name} {time.monotonic() - began:.0f} s")
    print_table(
        f"Summary ({started:%Y-%m-%d %H:%M} UTC; {machine()} at the end; {', '.join(took)})",
        ["measure", "relay", "baseline (same run)", "ratio", "target"],
        [[f.measure, f.relay, f.baseline, f.ratio, f.target] for f in FIGURES],
    )
    if failed:
        print(f"\nfailed: {', '.join(failed)} (tracebacks above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
