"""Output for operator commands: tables, JSON, durations, progress; every text is redacted."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from relay.cli.base import settings_from
from relay.ops.admin import Admin
from relay.ops.reports import plain

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


def open_admin(ctx: click.Context, **kwargs: Any) -> Admin:
    """An Admin for this command, closed when the command ends."""
    admin = Admin(settings_from(ctx), **kwargs)
    ctx.call_on_close(admin.close)
    return admin


def parse_duration(text: str, option: str) -> float:
    """``90``, ``45s``, ``30m``, ``1h``, ``7d``, ``2w`` → seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise click.BadParameter(
            f"{text!r} is not a duration; use a number with s, m, h, d or w, such as 1h or 7d",
            param_hint=option,
        )
    return float(match.group(1)) * _UNITS[match.group(2)]


def since(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.now(UTC) - timedelta(seconds=parse_duration(text, "--since"))


def age(seconds: float | None) -> str:
    """A short human duration: ``45s``, ``3m 12s``, ``2h 5m``, ``4d 3h``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"


def ago(iso: str | None) -> str:
    if iso is None:
        return "-"
    return age((datetime.now(UTC) - datetime.fromisoformat(iso)).total_seconds()) + " ago"


def emit_json(admin: Admin, data: Any) -> None:
    """Print ``data`` (results, dicts, lists) as indented JSON, through the redaction."""
    click.echo(admin.redact(json.dumps(plain(data), indent=2, ensure_ascii=False)))


def emit(admin: Admin, *renderables: Any) -> None:
    """Print rich renderables (tables, strings with markup) through the redaction."""
    console = Console(highlight=False, soft_wrap=False)
    with console.capture() as captured:
        for item in renderables:
            console.print(item)
    click.echo(admin.redact(captured.get()), nl=False)


def table(*columns: str, title: str | None = None, right: tuple[str, ...] = ()) -> Table:
    grid = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        grid.add_column(column, justify="right" if column in right else "left", overflow="fold")
    return grid


@contextlib.contextmanager
def progress(total: int, what: str) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for long runs (only on a terminal); yields ``advance(n)``."""
    console = Console(stderr=True)
    bar = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal or total < 1000,
    )
    with bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)
