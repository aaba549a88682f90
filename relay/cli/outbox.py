"""``relay outbox list|show|retry|discard|prune``: find failed events and fix them."""

from __future__ import annotations

import json
from collections.abc import Callable

import click
from rich.markup import escape
from rich.text import Text

from relay.cli.base import main, settings_from
from relay.cli.output import (
    age,
    ago,
    emit,
    emit_json,
    json_option,
    open_admin,
    parse_duration,
    progress,
    since,
    table,
)
from relay.destinations.outcome import truncate
from relay.ops.admin import Admin
from relay.ops.reports import Selection
from relay.outbox.queries import DISCARDABLE, RETRYABLE, Filters
from relay.outbox.schema import Status

STATUSES = click.Choice([s.value for s in Status])
destination_option = click.option("--destination", "-d", help="Only this destination.")
yes_option = click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")


@main.group()
def outbox() -> None:
    """The outbox rows: one per (destination, event_id), with status and last response."""


@outbox.command("list")
@click.option("--status", "-s", type=STATUSES, help="Only rows with this status.")
@destination_option
@click.option("--since", "since_", metavar="DURATION", help="Changed within, e.g. 30m, 1h, 7d.")
@click.option("--reason", help="HTTP status (404) or text in the error (timeout).")
@click.option("--limit", "-n", default=50, show_default=True, help="At most this many; 0: all.")
@json_option
@click.pass_context
def list_(
    ctx: click.Context,
    status: str | None,
    destination: str | None,
    since_: str | None,
    reason: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Outbox rows, most recently changed first."""
    admin = open_admin(ctx)
    filters = Filters(
        statuses=[status] if status else [],
        destination=destination,
        since=since(since_),
        reason=reason,
    )
    found = admin.list_rows(filters, limit or None)
    if as_json:
        emit_json(admin, found)
        return
    grid = table(
        "event_id", "destination", "status", "attempts", "last", "error", "changed",
        right=("attempts", "last"),
    )  # fmt: skip
    for row in found:
        grid.add_row(
            escape(row.event_id),
            escape(row.destination),
            _status(row.status),
            str(row.attempts),
            str(row.last_status or "-"),
            escape(truncate(row.last_error or "", 60).replace("\n", " ")),
            ago(row.updated_at),
        )
    footer = f"{len(found)} row(s), most recently changed first"
    if limit and len(found) == limit:
        footer += f" (the first {limit}; --limit 0 shows all)"
    emit(admin, grid, footer)


def _status(value: str) -> str:
    colour = {"delivered": "green", "dead": "red", "pending": "yellow"}.get(value, "dim")
    return f"[{colour}]{value}[/]"


@outbox.command("show")
@click.argument("event_id")
@destination_option
@json_option
@click.pass_context
def show(ctx: click.Context, event_id: str, destination: str | None, as_json: bool) -> None:
    """One event: its payload, every recorded attempt and its timestamps."""
    admin = open_admin(ctx)
    found = admin.events(event_id, destination)
    if len(found) > 1:
        names = ", ".join(detail.row.destination for detail in found)
        raise click.UsageError(
            f"event id {event_id!r} is in {len(found)} destinations ({names}); "
            "add --destination NAME"
        )
    detail = found[0]
    if as_json:
        emit_json(admin, detail)
        return
    row = detail.row
    title = escape(f"{row.destination} / {row.event_id}")
    facts = table("field", "value", title=title)
    for field in (
        "status", "attempts", "last_status", "last_error", "reason", "enqueued_at",
        "retried_at", "created_at", "updated_at", "next_attempt_at", "delivered_at",
    ):  # fmt: skip
        value = getattr(row, field)
        if value is not None:
            facts.add_row(field, _status(value) if field == "status" else str(value))
    history = table("#", "at", "HTTP", "verdict", "detail", title="attempts", right=("#", "HTTP"))
    for attempt in detail.history:
        history.add_row(
            str(attempt.attempt),
            attempt.at,
            str(attempt.status or "-"),
            attempt.verdict,
            escape(truncate(attempt.detail or "", 200)),
        )
    payload = Text(json.dumps(detail.payload, indent=2, ensure_ascii=False))
    emit(admin, facts, "payload:", payload, history if detail.history else "no attempt yet")


def _select(
    admin: Admin,
    event_ids: tuple[str, ...],
    all_dead: bool,
    destination: str | None,
    reason: str | None,
    allowed: tuple[str, ...],
) -> Selection:
    """The rows retry and discard apply to (named events, or --all-dead)."""
    if bool(event_ids) == all_dead:
        raise click.UsageError("name EVENT_IDs or use --all-dead (one of the two)")
    if reason and not all_dead:
        raise click.UsageError("--reason selects among dead rows: use it with --all-dead")
    return admin.select(event_ids, destination, allowed, all_dead=all_dead, dead_with_reason=reason)


def _change(
    ctx: click.Context,
    verb: str,
    event_ids: tuple[str, ...],
    all_dead: bool,
    destination: str | None,
    reason: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    admin = open_admin(ctx)
    allowed = RETRYABLE if verb == "retry" else DISCARDABLE
    selection = _select(admin, event_ids, all_dead, destination, reason, allowed)
    total = selection.total
    asks = verb == "discard" or all_dead
    if total and asks and not yes:
        what = "dead event(s)" if all_dead else "event(s)"
        scope = f" of {destination}" if destination else ""
        click.confirm(f"{verb} {total} {what}{scope}?", abort=True, err=True)
    change = admin.retry if verb == "retry" else admin.discard
    with progress(total, f"{verb}ing") as advance:
        done = change(selection, advance) if total else 0
    key = "retried" if verb == "retry" else "discarded"
    # Rows that changed between selection and update, or (discard) that a worker is sending.
    busy = max(0, total - done)
    if as_json:
        emit_json(admin, {key: done, "skipped": selection.skipped, "left_alone": busy})
        return
    for row in selection.skipped:
        click.echo(f"skipped {row.event_id} ({row.destination}): it is {row.status}", err=True)
    if verb == "retry":
        click.echo(
            f"retried {done} event(s): pending again with attempts and age reset; a worker "
            "sends them on its next round (or run `relay flush`)"
        )
    else:
        click.echo(f"discarded {done} event(s): never sent again, kept until pruned")
    if busy:
        click.echo(
            f"left {busy} event(s) alone: a worker changed them meanwhile or is sending them "
            f"right now; check them with `relay outbox show`, then {verb} again if needed",
            err=True,
        )


def change_options(command: Callable[..., None]) -> Callable[..., None]:
    """The arguments retry and discard share: ids or --all-dead, narrowed by -d / --reason."""
    options: list[Callable[[Callable[..., None]], Callable[..., None]]] = [
        click.argument("event_ids", nargs=-1, metavar="[EVENT_ID]..."),
        click.option(
            "--all-dead", is_flag=True, help="Every dead row (narrow with -d and --reason)."
        ),
        destination_option,
        click.option("--reason", help="With --all-dead: HTTP status (404) or text in the error."),
        yes_option,
        json_option,
        click.pass_context,
    ]
    for option in reversed(options):
        command = option(command)
    return command


@outbox.command()
@change_options
def retry(
    ctx: click.Context,
    event_ids: tuple[str, ...],
    all_dead: bool,
    destination: str | None,
    reason: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Send dead (or discarded) events again: back to pending, attempts and age limit reset.

    Named events are retried at once; --all-dead asks first unless --yes.
    """
    _change(ctx, "retry", event_ids, all_dead, destination, reason, yes, as_json)


@outbox.command()
@change_options
def discard(
    ctx: click.Context,
    event_ids: tuple[str, ...],
    all_dead: bool,
    destination: str | None,
    reason: str | None,
    yes: bool,
    as_json: bool,
) -> None:
    """Give up on dead or pending events: never sent again, kept for audit until pruned.

    A discarded event can still be retried. Asks first unless --yes.
    """
    _change(ctx, "discard", event_ids, all_dead, destination, reason, yes, as_json)


@outbox.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    help="Rows unchanged this long, e.g. 7d (default: RELAY_RETENTION_SECONDS).",
)
@click.option("--batch-size", default=1000, show_default=True, help="Rows per transaction.")
@yes_option
@json_option
@click.pass_context
def prune(
    ctx: click.Context, older_than: str | None, batch_size: int, yes: bool, as_json: bool
) -> None:
    """Delete delivered and discarded rows (and their attempts), in batches.

    Dead and pending rows are never pruned. Deduplication by event_id holds only while a row
    exists: prune no sooner than a resend of the same event could arrive. Asks unless --yes.
    """
    seconds = (
        parse_duration(older_than, "--older-than")
        if older_than
        else settings_from(ctx).retention_seconds
    )
    admin = open_admin(ctx)
    total = admin.prunable(seconds)
    if total and not yes:
        click.confirm(
            f"delete {total} delivered/discarded row(s) older than {age(seconds)}?",
            abort=True,
            err=True,
        )
    with progress(total, "pruning") as advance:
        done = admin.prune(seconds, batch_size, advance) if total else 0
    if as_json:
        emit_json(admin, {"pruned": done})
    else:
        click.echo(f"pruned {done} row(s) older than {age(seconds)}")
