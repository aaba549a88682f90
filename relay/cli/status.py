"""``relay status``, ``relay health`` and ``relay destinations pause|resume``."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.markup import escape

from relay.cli.base import main
from relay.cli.output import age, ago, emit, emit_json, json_option, open_admin, table
from relay.ops.admin import Admin
from relay.queue.memory import FULL_ADVICE


@main.command()
@click.option(
    "--alive-within",
    default=60.0,
    show_default=True,
    help="A worker counts as alive if it sent a heartbeat within this many seconds.",
)
@json_option
@click.pass_context
def status(ctx: click.Context, alive_within: float, as_json: bool) -> None:
    """The relay at a glance: queue, outbox counts, dead reasons, pauses, limits, workers.

    Per destination: events still in the Redis queue, outbox rows by status, the age of the
    oldest pending event, dead rows by reason, whether it is paused and why, its rate limit
    and how long the backlog takes to send at that limit.
    """
    admin = open_admin(ctx)
    report = admin.status(alive_within)
    if as_json:
        emit_json(admin, report)
        return
    grid = table(
        "destination", "queued", "pending", "oldest", "delivered", "dead", "paused", "limit",
        "drain", title="relay status",
        right=("queued", "pending", "oldest", "delivered", "dead", "drain"),
    )  # fmt: skip
    notes: list[str] = []
    for name, row in report.destinations.items():
        grid.add_row(
            escape(name if row.configured else f"{name} (not configured)"),
            "?" if row.queued is None else str(row.queued),
            str(row.pending),
            age(row.oldest_pending_age),
            str(row.delivered),
            str(row.dead),
            "[yellow]PAUSED[/]" if row.paused else "no",
            row.limit or "-",
            "paused" if row.paused else _drain(row.drain_seconds),
        )
        if row.dead_reasons:
            reasons = escape(", ".join(f"{r}: {n}" for r, n in sorted(row.dead_reasons.items())))
            notes.append(f"[red]{name} dead[/]: {reasons}  (relay outbox list --status dead)")
        if row.paused:
            notes.append(
                f"[yellow]{name} paused[/] by {row.paused_by} {ago(row.paused_since)}: "
                f"{escape(row.paused_reason or '')}  (relay destinations resume {name})"
            )
        if row.discarded:
            notes.append(f"{name}: {row.discarded} discarded (kept for audit until pruned)")
    quarantine = report.quarantine
    workers = report.workers
    notes.append(f"queue: {report.queue} event(s) in Redis")
    memory = report.redis
    if memory.full:
        notes.append(
            f"[red]Redis is at its memory limit[/] ({memory.used_memory / 2**20:.1f} MiB of "
            f"maxmemory {memory.maxmemory / 2**20:.1f} MiB, {memory.maxmemory_policy}): "
            f"{FULL_ADVICE}"
        )
    notes.append(
        f"quarantine: {quarantine.length} item(s) ({quarantine.total} ever)"
        + "".join(f"\n  {ago(q.at)}: {escape(q.reason)}" for q in quarantine.recent)
    )
    newest = workers.newest_heartbeat_age
    notes.append(
        f"workers: {workers.alive} alive"
        + (f", newest heartbeat {age(newest)} ago" if newest is not None else ", no heartbeat")
    )
    emit(admin, grid, *notes)


def _drain(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return "now" if seconds < 1 else f"~{age(seconds)}"


@main.command()
@click.option(
    "--max-age",
    default=60.0,
    show_default=True,
    help="Unhealthy when the newest worker heartbeat is older than this many seconds.",
)
@click.option("--no-workers", is_flag=True, help="Check Redis and the database only.")
@json_option
@click.pass_context
def health(ctx: click.Context, max_age: float, no_workers: bool, as_json: bool) -> None:
    """Exit 0 when Redis and the outbox answer and a worker beat recently; else 1 and why.

    For supervisor event listeners, cron and Kubernetes probes. Use --no-workers on hosts
    that only enqueue.
    """
    admin = open_admin(ctx, start_embedded=False)
    problem = admin.health(None if no_workers else max_age)
    if as_json:
        click.echo(json.dumps({"ok": problem is None, "reason": problem}))
    elif problem is None:
        click.echo("ok: Redis and the outbox answer" + ("" if no_workers else "; workers alive"))
    else:
        click.echo(f"unhealthy: {problem}", err=True)
    sys.exit(0 if problem is None else 1)


@main.group()
def destinations() -> None:
    """Stop and restart sending to a destination (key rotation, incidents)."""


@destinations.command("pause")
@click.argument("name")
@click.option(
    "--reason",
    default="paused by an operator",
    show_default=True,
    help="Shown by `relay status`.",
)
@json_option
@click.pass_context
def pause(ctx: click.Context, name: str, reason: str, as_json: bool) -> None:
    """Stop sending to NAME on every worker; its events wait as pending until resumed."""
    admin = open_admin(ctx)
    admin.pause(name, reason)
    _report(admin, as_json, {"destination": name, "paused": True, "reason": reason})
    if not as_json:
        click.echo(f"{name} paused: its events stay pending; `relay destinations resume {name}`")


@destinations.command("resume")
@click.argument("name")
@json_option
@click.pass_context
def resume(ctx: click.Context, name: str, as_json: bool) -> None:
    """Send to NAME again (after rotating its key, or when the incident is over)."""
    admin = open_admin(ctx)
    was_paused, due = admin.resume(name)
    data = {"destination": name, "paused": False, "was_paused": was_paused, "due_now": due}
    _report(admin, as_json, data)
    if not as_json:
        click.echo(
            (f"{name} resumed" if was_paused else f"{name} was not paused")
            + (f"; {due} waiting event(s) are due now" if due else "")
        )


def _report(admin: Admin, as_json: bool, data: dict[str, Any]) -> None:
    if as_json:
        emit_json(admin, data)
