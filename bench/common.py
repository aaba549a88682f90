"""Shared pieces of the benchmarks: real services in a temp dir, sample events, a table printer.

Nothing here asserts: the benchmarks print measurements and ratios to baselines of the same run.
"""

from __future__ import annotations

import contextlib
import math
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from relay.queue.embedded import find_redis_server
from relay.settings import Settings

SERVOKI_KEY = "servoki_benchkey0123456789"
DATALOOK_KEY = "dl_live_bench_s3cr3tkey"
NO_LIMIT = "1000000/1s"
"""A relay-side rate limit so high the limiter never makes a send wait (it still runs)."""


# -- services ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A redis-server child on a unix socket and a loopback TCP port, persistence as embedded."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.socket = directory / "redis.sock"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def unix_url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def tcp_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--unixsocket", str(self.socket), "--dir", str(self.directory), "--save", ""]
        # The embedded Redis's own settings (relay/embedded.py): AOF, fsync every second.
        args += ["--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no"]
        args += ["--maxmemory-policy", "noeviction", "--logfile", str(self.directory / "log")]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            client = redis.Redis(unix_socket_path=str(self.socket))
            try:
                client.ping()
                return self
            except redis.RedisError:
                time.sleep(0.02)
            finally:
                client.close()
        raise RuntimeError(f"redis-server did not start; see {self.directory / 'log'}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@contextlib.contextmanager
def redis_server(directory: Path) -> Iterator[RedisServer]:
    server = RedisServer(directory).start()
    try:
        yield server
    finally:
        server.stop()


class Postgres:
    """A pgserver PostgreSQL in ``directory``; each run gets a fresh, migrated database."""

    def __init__(self, directory: Path) -> None:
        import pgserver  # type: ignore[import-not-found]

        self.directory = directory
        self.server = pgserver.get_server(str(directory), cleanup_mode="stop")
        self._count = 0

    def fresh_url(self) -> str:
        from relay.outbox.engine import make_engine
        from relay.outbox.migrate import upgrade

        self._count += 1
        name = f"bench_{self._count}"
        self.server.psql(f"CREATE DATABASE {name};")
        url = f"postgresql+psycopg://postgres@/{name}?host={self.directory}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        return url

    def stop(self) -> None:
        self.server.cleanup()


def start_postgres(directory: Path) -> Postgres | None:
    """pgserver's PostgreSQL, or None when pgserver is not installed."""
    try:
        return Postgres(directory)
    except ImportError:
        return None


def bench_settings(
    home: Path, redis_url: str, database_url: str, api_url: str, **extra: Any
) -> Settings:
    """The benchmark's settings: the sandbox as both APIs, relay-side limits out of the way."""
    values: dict[str, Any] = {
        "home": home,
        "namespace": "bench",
        "redis_url": redis_url,
        "database_url": database_url,
        "servoki_api_key": SERVOKI_KEY,
        "servoki_url": api_url,
        "servoki_site": "example.com",
        "datalook_api_key": DATALOOK_KEY,
        "datalook_url": api_url,
        "servoki_rate_limit": NO_LIMIT,
        "datalook_rate_limit": NO_LIMIT,
    }
    values.update(extra)
    return Settings(**values)


# -- sample events --------------------------------------------------------------------------


def servoki_event(i: int) -> dict[str, Any]:
    return {
        "event_type": "purchase",
        "vid": f"v{i:08d}",
        "value": 10.0 + i % 100,
        "currency": "EUR",
        "props": {"order": f"o-{i}", "items": i % 7 + 1},
    }


def datalook_event(i: int) -> dict[str, Any]:
    return {
        "event_name": "success",
        "name": "paid",
        "page_path": "/checkout/ok",
        "properties": {"n": i, "plan": "pro"},
    }


def mixed_events(n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` events, alternating Servoki and DataLook."""
    return [
        ("servoki", servoki_event(i)) if i % 2 == 0 else ("datalook", datalook_event(i))
        for i in range(n)
    ]


# -- numbers and tables ---------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain, aligned text table (first column left, the rest right)."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


# -- the one summary table (python -m bench) ------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """One line of the summary: a measurement beside its baseline from the same run."""

    measure: str
    relay: str
    baseline: str
    ratio: str
    target: str = ""


FIGURES: list[Figure] = []
"""What the benchmarks of this process reported, in order; ``python -m bench`` prints them."""


def summarize(measure: str, relay: str, baseline: str, ratio: str, target: str = "") -> None:
    """Add one line to the summary table (each benchmark still prints its own details)."""
    FIGURES.append(Figure(measure, relay, baseline, ratio, target))
