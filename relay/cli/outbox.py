"""``relay outbox list|show|retry|discard|prune``: find failed events and fix them."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

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
from relay.errors import EventNotFound
from relay.ops.admin import Admin
from relay.outbox import queries as rows
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
    filters = rows.Filters(
        statuses=[status] if status else [],
        destination=destination,
        since=since(since_),
        reason=reason,
    )
    admin.check_destination(destination)
    with admin.db_errors():
        found = rows.list_rows(admin.engine, filters, limit or None)
    if as_json:
        emit_json(admin, found)
        return
    grid = table(
        "event_id", "destination", "status", "attempts", "last", "error", "changed",
        right=("attempts", "last"),
    )  # fmt: skip
    for row in found:
        grid.add_row(
            escape(row["event_id"]),
            escape(row["destination"]),
            _status(row["status"]),
            str(row["attempts"]),
            str(row["last_status"] or "-"),
            escape(truncate(row["last_error"] or "", 60).replace("\n", " ")),
            ago(row["updated_at"]),
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
    admin.check_destination(destination)
    with admin.db_errors():
        found = rows.find_rows(admin.engine, [event_id], destination)
        if not found:
            raise EventNotFound(_not_found([event_id], destination))
        if len(found) > 1:
            names = ", ".join(row.destination for row in found)
            raise click.UsageError(
                f"event id {event_id!r} is in {len(found)} destinations ({names}); "
                "add --destination NAME"
            )
        row = found[0]
        detail: dict[str, Any] = rows.row_dict(row)
        detail["payload"] = row.payload
        detail["history"] = rows.attempt_history(admin.engine, row.id)
    if as_json:
        emit_json(admin, detail)
        return
    title = escape(f"{detail['destination']} / {detail['event_id']}")
    facts = table("field", "value", title=title)
    for field in (
        "status", "attempts", "last_status", "last_error", "reason", "enqueued_at",
        "retried_at", "created_at", "updated_at", "next_attempt_at", "delivered_at",
    ):  # fmt: skip
        if detail[field] is not None:
            facts.add_row(
                field, _status(detail[field]) if field == "status" else str(detail[field])
            )
    history = table("#", "at", "HTTP", "verdict", "detail", title="attempts", right=("#", "HTTP"))
    for attempt in detail["history"]:
        history.add_row(
            str(attempt["attempt"]),
            attempt["at"],
            str(attempt["status"] or "-"),
            attempt["verdict"],
            escape(truncate(attempt["detail"] or "", 200)),
        )
    payload = Text(json.dumps(detail["payload"], indent=2, ensure_ascii=False))
    emit(admin, facts, "payload:", payload, history if detail["history"] else "no attempt yet")


def _not_found(event_ids: list[str], destination: str | None) -> str:
    shown = ", ".join(repr(i) for i in event_ids[:5]) + (" …" if len(event_ids) > 5 else "")
    where = f" for destination {destination}" if destination else ""
    return (
        f"no outbox row has event id {shown}{where}; check the id with "
        "`relay outbox list` (events still in the Redis queue have no row yet)"
    )


def _select(
    admin: Admin,
    event_ids: tuple[str, ...],
    all_dead: bool,
    destination: str | None,
    reason: str | None,
    allowed: tuple[str, ...],
) -> tuple[list[int] | None, rows.Filters | None, list[dict[str, str]], int]:
    """(row ids or filters, skipped rows, how many) for retry and discard."""
    if bool(event_ids) == all_dead:
        raise click.UsageError("name EVENT_IDs or use --all-dead (one of the two)")
    if reason and not all_dead:
        raise click.UsageError("--reason selects among dead rows: use it with --all-dead")
    admin.check_destination(destination)
    with admin.db_errors():
        if all_dead:
            filters = rows.Filters([Status.DEAD.value], destination, reason=reason)
            return None, filters, [], rows.count(admin.engine, filters)
        found = rows.find_rows(admin.engine, event_ids, destination)
    missing = [i for i in dict.fromkeys(event_ids) if i not in {row.event_id for row in found}]
    if missing:
        raise EventNotFound(_not_found(missing, destination))
    chosen = [row.id for row in found if row.status in allowed]
    skipped = [
        {"event_id": row.event_id, "destination": row.destination, "status": row.status}
        for row in found
        if row.status not in allowed
    ]
    return chosen, None, skipped, len(chosen)


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
    allowed = rows.RETRYABLE if verb == "retry" else rows.DISCARDABLE
    ids, filters, skipped, total = _select(admin, event_ids, all_dead, destination, reason, allowed)
    asks = verb == "discard" or all_dead
    if total and asks and not yes:
        what = "dead event(s)" if all_dead else "event(s)"
        scope = f" of {destination}" if destination else ""
        click.confirm(f"{verb} {total} {what}{scope}?", abort=True, err=True)
    change = rows.retry if verb == "retry" else rows.discard
    with admin.db_errors(), progress(total, f"{verb}ing") as advance:
        done = change(admin.engine, ids=ids, filters=filters, progress=advance) if total else 0
    key = "retried" if verb == "retry" else "discarded"
    # Rows that changed between selection and update, or (discard) that a worker is sending.
    busy = max(0, total - done)
    if as_json:
        emit_json(admin, {key: done, "skipped": skipped, "left_alone": busy})
        return
    for row in skipped:
        click.echo(
            f"skipped {row['event_id']} ({row['destination']}): it is {row['status']}", err=True
        )
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
    with admin.db_errors():
        total = rows.count_prunable(admin.engine, seconds)
    if total and not yes:
        click.confirm(
            f"delete {total} delivered/discarded row(s) older than {age(seconds)}?",
            abort=True,
            err=True,
        )
    with admin.db_errors(), progress(total, "pruning") as advance:
        done = rows.prune(admin.engine, seconds, batch=batch_size, progress=advance) if total else 0
    if as_json:
        emit_json(admin, {"pruned": done})
    else:
        click.echo(f"pruned {done} row(s) older than {age(seconds)}")
