"""The ``relay`` command group and what every subcommand shares."""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from relay import __version__
from relay.errors import RelayError
from relay.settings import Settings, load_settings


class RelayGroup(click.Group):
    """Turns relay errors into one clear line and exit status 2, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RelayError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


def settings_from(ctx: click.Context) -> Settings:
    """The settings, read once per command invocation."""
    root = ctx.find_root()
    if "settings" not in root.meta:
        root.meta["settings"] = load_settings()
    settings: Settings = root.meta["settings"]
    return settings


@click.group(cls=RelayGroup)
@click.version_option(__version__, prog_name="relay")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Queue-backed event relay for Servoki and DataLook."""
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
