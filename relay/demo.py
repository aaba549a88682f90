"""``relay demo``: the whole relay on embedded defaults, against the local sandbox.

Starts the embedded Redis, the sandbox (both APIs, real limits) and a real Celery worker with
beat, enqueues a realistic mix (duplicates and one invalid event included), shows progress, and
ends with a summary read from the outbox. Its data stays apart from real use: Redis namespace
``relay-demo`` and ``demo-outbox.db`` under the relay's home.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from relay import embedded
from relay.db import make_engine
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent, RelayError
from relay.migrate import upgrade
from relay.outbox import Outbox
from relay.sandbox import SandboxProcess
from relay.settings import Settings

DEMO_SERVOKI_KEY = "servoki_demo0123456789"
DEMO_DATALOOK_KEY = "dl_live_demo_s3cr3t"
NAMESPACE = "relay-demo"


def demo_settings(home: Path, sandbox_url: str) -> Settings:
    return Settings(
        home=home,
        namespace=NAMESPACE,
        redis_url=None,
        database_url=f"sqlite:///{(home / 'demo-outbox.db').resolve()}",
        servoki_api_key=SecretStr(DEMO_SERVOKI_KEY),
        servoki_url=sandbox_url,
        servoki_site="shop.example.com",
        datalook_api_key=SecretStr(DEMO_DATALOOK_KEY),
        datalook_url=sandbox_url,
        pump_seconds=2.0,
        backoff_base=0.5,
        backoff_cap=5.0,
    )


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment a worker needs to find the same relay (keys passed, never printed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    assert settings.servoki_api_key and settings.datalook_api_key
    env.update(
        RELAY_HOME=str(settings.home),
        RELAY_NAMESPACE=settings.namespace,
        RELAY_DATABASE_URL=settings.resolved_database_url,
        RELAY_SERVOKI_API_KEY=settings.servoki_api_key.get_secret_value(),
        RELAY_SERVOKI_URL=settings.servoki_url,
        RELAY_SERVOKI_SITE=settings.servoki_site or "",
        RELAY_DATALOOK_API_KEY=settings.datalook_api_key.get_secret_value(),
        RELAY_DATALOOK_URL=settings.datalook_url or "",
        RELAY_PUMP_SECONDS=str(settings.pump_seconds),
        RELAY_BACKOFF_BASE=str(settings.backoff_base),
        RELAY_BACKOFF_CAP=str(settings.backoff_cap),
    )
    return env


def realistic_mix(rng: random.Random) -> list[tuple[str, dict[str, Any], str | None]]:
    """(destination, payload, event_id) triples: purchases, signups, funnel steps, repeats."""
    events: list[tuple[str, dict[str, Any], str | None]] = []
    for n in range(1, 181):
        plan = rng.choice(["starter", "pro", "team"])
        events.append(
            (
                "servoki",
                {
                    "event_type": rng.choice(["purchase", "purchase", "signup"]),
                    "value": round(rng.uniform(5, 250), 2),
                    "currency": rng.choice(["EUR", "USD", "GBP"]),
                    "vid": f"anon-{rng.randrange(10**6):06d}",
                    "props": {"plan": plan},
                    "consent": rng.random() < 0.8,
                },
                f"order_{8000 + n}",
            )
        )
    for n in range(1, 121):
        success = rng.random() < 0.5
        payload: dict[str, Any] = {
            "event_name": "success" if success else rng.choice(["pageview", "click"]),
            "page_path": "/checkout/success" if success else rng.choice(["/pricing", "/signup"]),
            "success_user_id": f"user_{rng.randrange(1000)}",
            "properties": {"plan": rng.choice(["starter", "pro"]), "email": "dropped@pii"},
        }
        if success:
            payload.update(name="paid-customer", success_value=round(rng.uniform(9, 99), 2))
        events.append(("datalook", payload, f"dl_{n}"))
    # Retries from the web side: the same ids again. The outbox keeps one row per id.
    events += rng.sample(events, 25)
    # An event for a site Servoki does not know: it ends dead with the 404 kept.
    events.append(("servoki", {"event_type": "purchase", "site": "unknown.example"}, "order_lost"))
    rng.shuffle(events)
    return events


def run_demo(home: Path, console: Console) -> int:
    """Run the demo; return the exit code."""
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    redis_was_running = embedded.is_running(home / "redis.sock")
    with console.status("starting embedded Redis and the sandbox…"):
        embedded.ensure_running(home)
        sandbox = SandboxProcess().start()
    worker: subprocess.Popen[bytes] | None = None
    try:
        settings = demo_settings(home, sandbox.url)
        (home / "demo-outbox.db").unlink(missing_ok=True)
        engine = make_engine(settings.resolved_database_url)
        upgrade(engine)
        enqueuer = Enqueuer(settings)
        enqueuer._redis.delete(enqueuer.keys.queue, enqueuer.keys.paused)
        console.print(f"[bold]sandbox[/] {sandbox.url}   [bold]redis[/] {settings.redis_socket}")
        with console.status("starting a Celery worker with beat…"):
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "tasks",
                    "worker",
                    "--beat",
                    "--concurrency",
                    "2",
                    "--loglevel",
                    "WARNING",
                    "--without-mingle",
                    "--without-gossip",
                    "--pidfile=",
                    "-s",
                    str(home / "demo-beat-schedule"),
                ],
                env=worker_env(settings),
                stdout=subprocess.DEVNULL,
                stderr=open(home / "demo-worker.log", "wb"),  # noqa: SIM115
            )
        events = realistic_mix(random.Random(8841))
        invalid = ("servoki", {"event_type": "purchase", "currency": "euro"}, "order_bad")
        console.print(f"enqueueing {len(events)} events (25 repeated ids) and one invalid one:")
        try:
            enqueuer.encode(*invalid)
        except InvalidEvent as exc:
            console.print(f"  [red]InvalidEvent[/]: {exc}  [dim](nothing was written)[/]")
        for destination, payload, event_id in events:
            enqueuer.push([enqueuer.encode(destination, payload, event_id)[1]])
        unique = len({(d, i) for d, _, i in events})
        outbox = Outbox(engine)
        with Progress(
            TextColumn("delivering"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("deliver", total=unique)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = sum(
                    c.get("delivered", 0) + c.get("dead", 0) for c in outbox.counts().values()
                )
                progress.update(task, completed=done)
                if done >= unique:
                    break
                if worker.poll() is not None:
                    raise RelayError(
                        f"the Celery worker exited ({worker.returncode}); "
                        f"see {home}/demo-worker.log"
                    )
                time.sleep(0.2)
        console.print(summary_table(outbox, events, sandbox.stats()))
        engine.dispose()
        enqueuer.close()
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: stopping the worker, the sandbox and Redis[/]")
        return 130
    finally:
        if worker is not None:
            _stop(worker)
        sandbox.stop()
        if not redis_was_running:
            embedded.stop(home)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: running pumps finish
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def summary_table(
    outbox: Outbox, events: list[tuple[str, dict[str, Any], str | None]], stats: dict[str, Any]
) -> Table:
    counts = outbox.counts()
    reasons = outbox.dead_reasons()
    table = Table(title="relay demo: what the outbox says")
    for column in ("destination", "enqueued", "deduplicated", "delivered", "dead", "API accepted"):
        table.add_column(column, justify="left" if column == "destination" else "right")
    for name in ("servoki", "datalook"):
        enqueued = sum(1 for d, _, _ in events if d == name)
        rows = sum(counts.get(name, {}).values())
        dead = counts.get(name, {}).get("dead", 0)
        why = ", ".join(f"{reason}: {n}" for reason, n in reasons.get(name, {}).items())
        table.add_row(
            name,
            str(enqueued),
            str(enqueued - rows),
            str(counts.get(name, {}).get("delivered", 0)),
            f"{dead} ({why})" if dead else "0",
            str(stats[name]["accepted"]),
        )
    return table
