"""What :class:`~relay.ops.admin.Admin` hands the CLI and the exporter: typed, frozen results.

Field names and order are the keys ``--json`` prints (:func:`plain` turns a result into the
JSON-ready dicts and lists), so mypy checks the readers and the JSON keeps its shape. The
outbox's own rows (:class:`~relay.outbox.queries.OutboxRow`, ``Attempt``, ``Backlog``) are
defined with the queries that read them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from relay.outbox.queries import Attempt, Filters, OutboxRow


@dataclass(frozen=True)
class DestinationStatus:
    """One destination in ``relay status``."""

    configured: bool
    queued: int | None
    """Items in the Redis queue; None when the queue was too long to count."""
    pending: int
    delivered: int
    dead: int
    discarded: int
    oldest_pending_age: float | None
    dead_reasons: dict[str, int]
    paused: bool
    paused_reason: str | None
    paused_by: str | None
    paused_since: str | None
    limit: str | None
    rate_per_second: float | None
    drain_seconds: float | None
    """How long the backlog takes at the limit; None when paused or unlimited."""


@dataclass(frozen=True)
class RedisState:
    used_memory: int
    maxmemory: int
    maxmemory_policy: str
    full: bool


@dataclass(frozen=True)
class QuarantineEntry:
    reason: str
    at: str | None
    """ISO 8601; None when the entry could not be read."""


@dataclass(frozen=True)
class Quarantine:
    """Quarantined items: how many, how many ever, the newest reasons (never the items)."""

    length: int
    total: int
    recent: list[QuarantineEntry]


@dataclass(frozen=True)
class Workers:
    alive: int
    newest_heartbeat_age: float | None


@dataclass(frozen=True)
class StatusReport:
    """Everything ``relay status`` shows."""

    queue: int
    redis: RedisState
    quarantine: Quarantine
    workers: Workers
    destinations: dict[str, DestinationStatus]


@dataclass(frozen=True)
class EventDetail:
    """``relay outbox show``: one row, its payload and its attempts."""

    row: OutboxRow
    payload: dict[str, Any]
    history: list[Attempt]

    def to_json(self) -> dict[str, Any]:
        """The row's fields, then ``payload`` and ``history``."""
        return {**plain(self.row), "payload": self.payload, "history": plain(self.history)}


@dataclass(frozen=True)
class Skipped:
    """A named event a retry or discard left alone, because of its status."""

    event_id: str
    destination: str
    status: str


@dataclass(frozen=True)
class Selection:
    """The rows a retry or discard applies to: named rows by id, or every row of ``filters``."""

    ids: list[int] | None
    filters: Filters | None
    skipped: list[Skipped]
    total: int
    """How many rows it held when it was made (0 for :meth:`where`: not counted)."""

    @classmethod
    def where(cls, filters: Filters) -> Selection:
        """Every row matching ``filters`` when the change runs, not counted beforehand."""
        return cls(None, filters, [], 0)


class Resumed(NamedTuple):
    was_paused: bool
    due_now: int
    """Waiting events made due at once."""


def plain(value: Any) -> Any:
    """``value`` with every result in it turned into dicts and lists, for ``json.dumps``."""
    if hasattr(value, "to_json"):
        return value.to_json()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
