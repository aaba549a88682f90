"""``python -m relay.dev.sandbox``: run the sandbox until SIGTERM or SIGINT.

Prints exactly one line, ``sandbox listening on http://HOST:PORT``, once the socket is bound, so
a parent started with ``--port 0`` can learn the real port.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from relay.dev.sandbox.app import serve
from relay.dev.sandbox.state import DEFAULT_SITES, RateLimit, SandboxConfig, parse_sites


def _limit(text: str) -> RateLimit | None:
    if text.strip().lower() in {"off", "none"}:
        return None
    try:
        return RateLimit.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m relay.dev.sandbox",
        description="Local HTTP server implementing the Servoki and DataLook event APIs.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (default)")
    parser.add_argument(
        "--servoki-limit",
        type=_limit,
        default=RateLimit(600, 60.0),
        metavar="N/Ws",
        help="per client IP, or off (default 600/60s)",
    )
    parser.add_argument(
        "--datalook-limit",
        type=_limit,
        default=RateLimit(500, 10.0),
        metavar="N/Ws",
        help="per key id, or off (default 500/10s)",
    )
    parser.add_argument(
        "--no-limits",
        action="store_true",
        help="never answer 429 (windows and peaks are still measured)",
    )
    parser.add_argument(
        "--site",
        action="append",
        dest="sites",
        metavar="SITE",
        help="known Servoki site, repeatable (default: " + ", ".join(sorted(DEFAULT_SITES)) + ")",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed for fault dice")
    parser.set_defaults(sites=None)
    return parser  # fmt: skip


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """Turn parsed arguments into the sandbox configuration."""
    return SandboxConfig(
        servoki_limit=None if args.no_limits else args.servoki_limit,
        datalook_limit=None if args.no_limits else args.datalook_limit,
        sites=parse_sites(args.sites) if args.sites else DEFAULT_SITES,
        seed=args.seed,
    )


async def _run(config: SandboxConfig, host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def announce(url: str) -> None:
        print(f"sandbox listening on {url}", flush=True)

    await serve(config, host, port, ready=announce, stop=stop)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(_run(config_from_args(args), args.host, args.port))
    except OSError as exc:
        print(f"sandbox: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
