"""What enqueue() adds to a web request: the example apps under real servers, with vs without it.

    .venv/bin/python -m bench.web [--requests N] [--quick]

Starts its own redis-server and runs examples/flask_app.py under gunicorn (--preload, 4 sync
workers) and examples/fastapi_app.py under uvicorn. One keep-alive client sends the
same order body alternately to ``/pay`` (validates and enqueues one event) and ``/ping`` (the same
handler work without the relay), in blocks, so both see the same load; the difference of their
latencies is the relay's cost per request. No worker runs: events stay queued.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: make `bench` and `relay` importable from the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from bench.common import free_port, percentile, print_table, ratio, redis_server, summarize

ROOT = Path(__file__).resolve().parents[1]
SERVOKI_KEY = "servoki_benchkey0123456789"

SERVERS = {
    "gunicorn --preload -w 4 (Flask)": (
        ["gunicorn", "--preload", "-w", "4", "-k", "sync"],
        "examples.flask_app:app",
    ),
    # One worker: under --workers N on this uvicorn every answer waits ~44 ms for a delayed
    # ACK (with or without the relay), which would drown what is measured here.
    "uvicorn (FastAPI)": (
        ["uvicorn", "--no-access-log"],
        "examples.fastapi_app:app",
    ),
}


def start(name: str, redis_url: str, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    command, app = SERVERS[name]
    port = free_port()
    if command[0] == "gunicorn":
        command = [*command, "-b", f"127.0.0.1:{port}", app]
    else:
        command = [*command, "--host", "127.0.0.1", "--port", str(port), app]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        PYTHONPATH=str(ROOT),
        RELAY_HOME=str(home),
        RELAY_NAMESPACE="bench-web",
        RELAY_REDIS_URL=redis_url,
        RELAY_SERVOKI_API_KEY=SERVOKI_KEY,
        RELAY_SERVOKI_SITE="example.com",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.post(
                f"{url}/ping", json={"id": "up", "value": 1, "currency": "EUR"}
            ).is_success:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"{name} did not start")


def measure(url: str, requests: int, block: int = 50) -> tuple[list[float], list[float]]:
    """Latencies (µs) of /pay and /ping, sent alternately in blocks on one keep-alive client."""
    pay: list[float] = []
    ping: list[float] = []
    # No Nagle: a request's headers and body go out at once, else delayed ACKs add ~40 ms.
    nodelay = httpx.HTTPTransport(socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
    with httpx.Client(base_url=url, timeout=30, transport=nodelay) as client:
        for path in ("/pay", "/ping") * 5:  # warm every worker and connection
            client.post(path, json={"id": "warm", "value": 1.0, "currency": "EUR"})
        i = 0
        while len(pay) < requests:
            for path, into in (("/pay", pay), ("/ping", ping)):
                for _ in range(block):
                    i += 1
                    body = {"id": f"b{i}", "value": 10.0, "currency": "EUR"}
                    start = time.perf_counter()
                    answer = client.post(path, json=body)
                    into.append((time.perf_counter() - start) * 1e6)
                    answer.raise_for_status()
    return pay, ping


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=None, help="per endpoint (3000)")
    parser.add_argument("--quick", action="store_true", help="500 requests per endpoint")
    args = parser.parse_args(argv)
    requests = args.requests or (500 if args.quick else 3000)
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="relay-bench-web-") as tmp,
        redis_server(Path(tmp)) as server,
    ):
        for name in SERVERS:
            began = time.monotonic()
            proc, url = start(name, server.unix_url, Path(tmp) / ".relay")
            try:
                pay, ping = measure(url, requests)
            finally:
                proc.terminate()
                proc.wait(30)
            for q in (50, 99):
                with_relay, without = percentile(pay, q), percentile(ping, q)
                summarize(
                    f"web request with enqueue(), {name}: p{q}",
                    f"{with_relay:.0f} µs ({with_relay - without:+.0f} µs)",
                    f"same handler without it {without:.0f} µs",
                    ratio(with_relay, without),
                    "report",
                )
                rows.append(
                    [
                        f"{name} p{q}",
                        f"{with_relay:.0f} µs",
                        f"{without:.0f} µs",
                        f"{with_relay - without:+.0f} µs",
                        ratio(with_relay, without),
                    ]
                )
            rows.append([f"  ({requests} requests each, {time.monotonic() - began:.0f} s)"])
    print_table(
        "Per-request cost of enqueue() in a handler (same body, same server, alternating blocks)",
        ["server", "/pay (enqueues)", "/ping (no relay)", "enqueue cost", "ratio"],
        [row + [""] * (5 - len(row)) for row in rows],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
