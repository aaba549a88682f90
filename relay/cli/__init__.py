"""The ``relay`` command: nouns and verbs over the queue, the outbox and the worker.

    relay status | health                      what state the relay is in
    relay outbox list|show|retry|discard|prune the outbox rows, for operators
    relay destinations pause|resume NAME       stop and restart sending to one destination
    relay flush | db upgrade | redis | sandbox | demo

Each noun lives in its own module; importing them registers their commands on ``main``.
"""

from __future__ import annotations

from relay.cli import outbox, run, status  # noqa: F401  (registers the commands)
from relay.cli.base import RelayGroup, main, settings_from

__all__ = ["RelayGroup", "main", "settings_from"]
