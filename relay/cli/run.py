"""Running the relay: ``relay flush``, ``db upgrade``, ``redis``, ``sandbox`` and ``demo``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from relay.cli.base import main, settings_from


@main.group()
def db() -> None:
    """The outbox database."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Create or migrate the outbox table to the newest schema."""
    from sqlalchemy.exc import SQLAlchemyError

    from relay.outbox.engine import make_engine
    from relay.outbox.migrate import upgrade
    from relay.urls import describe_error, safe_url

    settings = settings_from(ctx)
    url = settings.resolved_database_url
    engine = make_engine(url)
    try:
        upgrade(engine)
    except SQLAlchemyError as exc:
        raise click.ClickException(
            f"could not migrate the outbox at {safe_url(url)}: {describe_error(exc, url)}"
        ) from exc
    finally:
        engine.dispose()
    click.echo(f"outbox at {safe_url(url)} is at the newest schema")


@main.command()
@click.option(
    "--max-wait",
    default=60.0,
    show_default=True,
    help="Wait at most this many seconds for scheduled retries before giving up.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def flush(ctx: click.Context, max_wait: float, as_json: bool) -> None:
    """Drain the queue and deliver until nothing is due, then exit.

    Exit status: 0 all delivered; 1 some events ended dead; 2 a destination is paused;
    3 events are still pending (retries scheduled beyond --max-wait).
    """
    from relay.worker.loop import Worker

    worker = Worker(settings_from(ctx))
    try:
        report = worker.flush(max_wait=max_wait)
    finally:
        worker.close()
    summary = {
        "drained": report.drained.taken,
        "new": report.drained.inserted,
        "duplicates": report.drained.duplicates,
        "quarantined": report.drained.quarantined,
        "delivered": report.dispatched.delivered,
        "retried": report.dispatched.retried,
        "dead": report.dispatched.dead,
        "paused": report.paused,
        "pending_left": report.pending_left,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(", ".join(f"{k} {v}" for k, v in summary.items() if k != "paused"))
    if report.dispatched.dead:
        click.secho(
            f"{report.dispatched.dead} event(s) ended dead: see the outbox rows with status "
            "'dead' for the API's response",
            fg="red",
            err=True,
        )
    for name, reason in report.paused.items():
        click.secho(
            f"destination {name} is paused ({reason}): fix its key; it resumes by itself "
            "once a probe is accepted",
            fg="yellow",
            err=True,
        )
    if report.pending_left and not report.paused:
        click.secho(
            f"{report.pending_left} event(s) still pending with retries scheduled",
            fg="yellow",
            err=True,
        )
    sys.exit(report.exit_code)


@main.group()
def redis() -> None:
    """The embedded Redis (used when RELAY_REDIS_URL is unset)."""


@redis.command("start")
@click.pass_context
def redis_start(ctx: click.Context) -> None:
    """Start the embedded redis-server under RELAY_HOME (default ./.relay)."""
    from relay.queue import embedded

    socket = embedded.ensure_running(settings_from(ctx).home)
    click.echo(f"embedded Redis is running on unix://{socket}")


@redis.command("stop")
@click.pass_context
def redis_stop(ctx: click.Context) -> None:
    """Stop the embedded redis-server (its AOF keeps the queue)."""
    from relay.queue import embedded

    stopped = embedded.stop(settings_from(ctx).home)
    click.echo("embedded Redis stopped" if stopped else "embedded Redis was not running")


@main.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sandbox(args: tuple[str, ...]) -> None:
    """Run the local stand-in for both APIs (see `relay sandbox --help`)."""
    from relay.dev.sandbox.__main__ import main as sandbox_main

    argv = list(args)
    if not any(a == "--port" or a.startswith("--port=") for a in argv) and "--help" not in argv:
        argv += ["--port", "8765"]
    sys.exit(sandbox_main(argv))


@main.command()
def demo() -> None:
    """Run the relay end to end on embedded defaults against the sandbox."""
    from rich.console import Console

    from relay.dev.demo import run_demo

    # Only RELAY_HOME is read: the demo never sends to configured, real destinations.
    sys.exit(run_demo(Path(os.environ.get("RELAY_HOME", ".relay")), Console()))
