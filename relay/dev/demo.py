"""``relay demo``: the whole relay on embedded defaults, against the local sandbox.

Starts the embedded Redis, the sandbox (both APIs, real limits) and a real Celery worker with
beat, enqueues a realistic mix (duplicates and one invalid event included), shows progress, and
ends with a summary read from the outbox. It uses the relay's home as the relay itself does
(the home's outbox and Redis namespace), so ``relay status`` and ``relay outbox list`` run in
the same directory afterwards show its events. Its event ids start with ``demo-<run>-``: they
never collide with real ids, a second run is not deduplicated against the first, and the
summary counts only this run. It refuses a home where real work waits (its worker would send
that to the sandbox), and on Ctrl-C it sets aside what it left undelivered (no real worker
sends demo events to a real API).
"""

from __future__ import annotations

import json
import os
import random
import secrets
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

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent, RelayError
from relay.ops.admin import QUEUE_SCAN_CAP, Admin
from relay.ops.reports import Selection
from relay.outbox.queries import Filters
from relay.outbox.schema import Status
from relay.queue import embedded
from relay.settings import Settings

DEMO_SERVOKI_KEY = "servoki_demo0123456789"
DEMO_DATALOOK_KEY = "dl_live_demo_s3cr3tkey"
DEMO_IDS = "demo-"
"""Every demo event id starts with this, then the run's id: ``demo-3f9a1c-order_8001``."""

Counts = dict[str, dict[str, int]]


def demo_settings(home: Path, sandbox_url: str) -> Settings:
    """Embedded defaults at ``home`` (its outbox, its namespace), the sandbox as both APIs."""
    return Settings(
        home=home,
        redis_url=None,
        database_url=None,
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
    env.update(settings.kind_environment())
    env.update(
        RELAY_HOME=str(settings.home),
        RELAY_NAMESPACE=settings.namespace,
        RELAY_DATABASE_URL=settings.resolved_database_url,
        RELAY_PUMP_SECONDS=str(settings.pump_seconds),
        RELAY_BACKOFF_BASE=str(settings.backoff_base),
        RELAY_BACKOFF_CAP=str(settings.backoff_cap),
    )
    return env


def realistic_mix(
    rng: random.Random, prefix: str = ""
) -> list[tuple[str, dict[str, Any], str | None]]:
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
                f"{prefix}order_{8000 + n}",
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
        events.append(("datalook", payload, f"{prefix}dl_{n}"))
    # Retries from the web side: the same ids again. The outbox keeps one row per id.
    events += rng.sample(events, 25)
    # An event for a site Servoki does not know: it ends dead with the 404 kept.
    lost = {"event_type": "purchase", "site": "unknown.example"}
    events.append(("servoki", lost, f"{prefix}order_lost"))
    rng.shuffle(events)
    return events


def wait_delivered(
    admin: Admin,
    prefix: str,
    unique: int,
    worker: subprocess.Popen[bytes],
    home: Path,
    console: Console,
) -> None:
    """Show progress until every demo event is delivered or dead (at most two minutes)."""
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
            counts = admin.counts(Filters(event_id_prefix=prefix))
            done = sum(c.get("delivered", 0) + c.get("dead", 0) for c in counts.values())
            progress.update(task, completed=done)
            if done >= unique:
                return
            if worker.poll() is not None:
                raise RelayError(
                    f"the Celery worker exited ({worker.returncode}); see {home}/demo-worker.log"
                )
            time.sleep(0.2)


def run_demo(home: Path, console: Console) -> int:
    """Run the demo; return the exit code."""
    home = home.resolve()
    if not home.exists():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    redis_was_running = embedded.is_running(home / "redis.sock")
    prefix = f"{DEMO_IDS}{secrets.token_hex(3)}-"
    # The admin only reads and sets aside; it needs the destinations' names, not their URLs.
    admin = Admin(demo_settings(home, "http://127.0.0.1"))
    sandbox: SandboxProcess | None = None
    worker: subprocess.Popen[bytes] | None = None
    enqueuer: Enqueuer | None = None
    pushed: list[bytes] = []
    interrupted = False
    try:
        with console.status("starting embedded Redis…"):
            check_home_is_free(admin, home)  # starts the embedded Redis, migrates the outbox
        with console.status("starting the sandbox…"):
            sandbox = SandboxProcess().start()
        settings = demo_settings(home, sandbox.url)
        enqueuer = Enqueuer(settings)
        console.print(f"[bold]sandbox[/] {sandbox.url}   [bold]redis[/] {settings.redis_socket}")
        with console.status("starting a Celery worker with beat…"):
            worker = start_worker(settings, home)
        events = realistic_mix(random.Random(8841), prefix)
        invalid = ("servoki", {"event_type": "purchase", "currency": "euro"}, "order_bad")
        console.print(f"enqueueing {len(events)} events (25 repeated ids) and one invalid one:")
        try:
            enqueuer.encode(*invalid)
        except InvalidEvent as exc:
            console.print(f"  [red]InvalidEvent[/]: {exc}  [dim](nothing was written)[/]")
        for destination, payload, event_id in events:
            pushed.append(enqueuer.encode(destination, payload, event_id)[1])
            enqueuer.push(pushed[-1:])
        unique = len({(d, i) for d, _, i in events})
        wait_delivered(admin, prefix, unique, worker, home, console)
        console.print(summary_table(*run_counts(admin, prefix), events, sandbox.stats()))
        outbox_path = settings.resolved_database_url.removeprefix("sqlite:///")
        console.print(
            f"The demo's events (ids {prefix}…) stay in this relay's outbox, {outbox_path}. "
            "See them from this directory with:"
        )
        console.print(
            "  [bold]relay status[/]", "  [bold]relay outbox list --status dead[/]", sep="\n"
        )
        return 0
    except KeyboardInterrupt:
        interrupted = True
        console.print("[yellow]interrupted: stopping the worker, the sandbox and Redis[/]")
        return 130
    finally:
        if worker is not None:
            _stop(worker)
        if interrupted and pushed:
            left = set_aside(admin, prefix, pushed)
            console.print(f"[yellow]set aside {left} undelivered demo event(s): never sent[/]")
        if enqueuer is not None:
            enqueuer.close()
        if sandbox is not None:
            sandbox.stop()
        admin.close()
        if not redis_was_running:
            embedded.stop(home)


def start_worker(settings: Settings, home: Path) -> subprocess.Popen[bytes]:
    """A real Celery worker with beat on the demo's settings; its files private to the owner."""
    log = os.open(home / "demo-worker.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        return subprocess.Popen(
            [
                sys.executable, "-m", "celery", "-A", "tasks", "worker", "--beat",
                "--concurrency", "2", "--loglevel", "WARNING", "--without-mingle",
                "--without-gossip", "--pidfile=", "-s", str(home / "demo-beat-schedule"),
            ],
            env=worker_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=log,
            umask=0o077,
        )  # fmt: skip
    finally:
        os.close(log)


def check_home_is_free(admin: Admin, home: Path) -> None:
    """Refuse a home where real work waits or a worker runs: the demo's worker (with the
    sandbox's URLs) would deliver real events to the sandbox, and a real worker would send the
    demo's events to a real API. Leftovers of an earlier demo are fine."""
    busy: list[str] = []
    pending = _pending(admin, Filters([Status.PENDING.value])) - _pending(
        admin, Filters([Status.PENDING.value], event_id_prefix=DEMO_IDS)
    )
    if pending:
        busy.append(f"{pending} pending event(s) in its outbox")
    with admin.redis_errors():
        items = admin.redis.lrange(admin.keys.queue, 0, QUEUE_SCAN_CAP - 1)
    queued = len([item for item in items if not _is_demo_item(item)])
    if queued:
        busy.append(f"{queued} event(s) in its queue")
    beats = admin.heartbeats()
    if beats and time.time() - max(beats.values()) < 60:
        busy.append("a worker sent a heartbeat within the last minute")
    paused = admin.pauses()
    if paused:
        busy.append(f"paused: {', '.join(sorted(paused))}")
    if busy:
        raise RelayError(
            f"the relay at {home} is in use ({'; '.join(busy)}): the demo's worker would send "
            "its events to the sandbox, or a real worker the demo's to a real API. Run the demo "
            "in its own home, such as: RELAY_HOME=/tmp/relay-demo relay demo"
        )


def _pending(admin: Admin, filters: Filters) -> int:
    return sum(
        by_status.get(Status.PENDING.value, 0) for by_status in admin.counts(filters).values()
    )


def _is_demo_item(item: bytes | str) -> bool:
    try:
        event_id = json.loads(item).get("id")
    except (ValueError, AttributeError):
        return False
    return isinstance(event_id, str) and event_id.startswith(DEMO_IDS)


def run_counts(admin: Admin, prefix: str) -> tuple[Counts, Counts]:
    """This run's rows by destination and status, and its dead rows by reason (the reasons
    ``relay status`` shows)."""
    mine = Filters(event_id_prefix=prefix)
    return admin.counts(mine), admin.dead_reasons(mine)


def set_aside(admin: Admin, prefix: str, pushed: list[bytes]) -> int:
    """After Ctrl-C: take this run's items off the queue and discard its pending rows, so a
    real worker on this home never sends demo events to a real API."""
    with admin.redis_errors():
        pipe = admin.redis.pipeline()
        for item in pushed:
            pipe.lrem(admin.keys.queue, 0, item.decode())  # the same bytes: items are UTF-8
        removed = int(sum(pipe.execute()))
    pending = Filters([Status.PENDING.value], event_id_prefix=prefix)
    return removed + admin.discard(Selection.where(pending))


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # Celery's warm shutdown: running pumps finish
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def summary_table(
    counts: Counts,
    reasons: Counts,
    events: list[tuple[str, dict[str, Any], str | None]],
    stats: dict[str, Any],
) -> Table:
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
