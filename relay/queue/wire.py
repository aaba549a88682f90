"""The queue's wire format: one JSON object per Redis list item, written by ``enqueue()``.

    {"v": 1, "d": destination, "id": event_id, "t": unix time enqueued, "p": payload}

One item is not an event: :data:`WAKE`, pushed after a transactional enqueue commits its outbox
row (``relay.enqueue_in``), so that a worker blocked on the queue wakes and claims the row at
once. The drain counts it and drops it with its batch.

:func:`encode` writes an item; :func:`parse_items` reads items back as :class:`NewEvent`
values, setting aside (as poison) every item that could not become an outbox row. Pure
functions: no Redis, no database, so the enqueue path stays light.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

QUEUE_FORMAT = 1
WAKE = b"wake"
"""The wake-up item: no event, only "a committed outbox row is due" (never JSON, so no writer
of events can make it by accident)."""
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def encode(destination: str, event_id: str, payload: dict[str, Any], at: datetime) -> bytes:
    """The queue item for one prepared event (compact JSON, UTF-8).

    Raises ``TypeError``/``ValueError`` for a value JSON cannot hold (NaN, a set) and
    ``UnicodeEncodeError`` for text that is not valid Unicode (a lone surrogate).
    """
    item = {"v": QUEUE_FORMAT, "d": destination, "id": event_id, "t": at.timestamp()}
    item["p"] = payload
    if _plain(payload):
        try:
            return orjson.dumps(item)
        except orjson.JSONEncodeError:
            pass  # a big int, a non-str key or a lone surrogate: json.dumps says which
    data = json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return data.encode()


_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})
_PLAIN_NODES = 10_000
_INF = float("inf")


def _plain(payload: dict[str, Any]) -> bool:
    """Whether orjson writes ``payload`` as json.dumps would, or raises where it would.

    orjson also writes what json.dumps refuses (NaN and Infinity as null; UUIDs, enums,
    datetimes, dataclasses), so it gets only dicts, lists and scalars of these exact types, with
    finite floats; everything else, and a payload over ``_PLAIN_NODES`` values (or a cycle),
    goes to json.dumps, which accepts or refuses it as it always has.
    """
    stack: list[Any] = [payload]
    budget = _PLAIN_NODES
    while stack:
        value = stack.pop()
        kind = type(value)
        if kind is dict:
            stack.extend(value.values())
        elif kind is list:
            stack.extend(value)
        elif kind not in _PLAIN_SCALARS or (kind is float and not -_INF < value < _INF):
            return False
        budget -= 1
        if not budget:
            return False
    return True


@dataclass(frozen=True)
class NewEvent:
    """An event drained from the queue, ready to be inserted."""

    destination: str
    event_id: str
    payload: dict[str, Any]
    enqueued_at: datetime
    raw: bytes = field(default=b"", repr=False, compare=False)
    """The queue item it was parsed from: what is quarantined if the outbox refuses it."""


@dataclass
class Batch:
    """Items taken from the queue: parsed events and the raw items that could not be parsed."""

    events: list[NewEvent] = field(default_factory=list)
    poison: list[tuple[bytes, str]] = field(default_factory=list)
    wakeups: int = 0
    """:data:`WAKE` items taken: acked with the batch, never inserted."""

    def __len__(self) -> int:
        return len(self.events) + len(self.poison) + self.wakeups


def parse_items(raw: list[bytes], known: frozenset[str], max_bytes: int) -> Batch:
    """Parse queue items; the ones that cannot become an outbox row go to ``poison``."""
    batch = Batch()
    for item in raw:
        if item == WAKE:
            batch.wakeups += 1
            continue
        try:
            batch.events.append(_parse_one(item, known, max_bytes))
        except ValueError as exc:
            batch.poison.append((item, str(exc)))
        except Exception as exc:  # one odd item must never block the drain of the rest
            batch.poison.append((item, f"unreadable: {type(exc).__name__}: {exc}"))
    return batch


def strict_json(data: bytes | str) -> Any:
    """``json.loads`` without Python's extensions: ``NaN`` and ``Infinity`` raise ValueError,
    as every other text that is not JSON does (neither API, nor the outbox, takes them)."""
    return json.loads(data, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _parse_one(item: bytes, known: frozenset[str], max_bytes: int) -> NewEvent:
    if len(item) > max_bytes:
        raise ValueError(f"item of {len(item)} bytes is over the {max_bytes} byte limit")
    try:
        data: Any = strict_json(item)
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError, NaN or Infinity
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a queue item object")
    destination, event_id, payload, stamp = (data.get(k) for k in ("d", "id", "p", "t"))
    if not isinstance(destination, str) or destination not in known:
        raise ValueError(f"unknown destination {destination!r}: not configured on this worker")
    if not isinstance(event_id, str) or not event_id or len(event_id) > 200:
        raise ValueError(f"bad event id {event_id!r}")
    if not isinstance(payload, dict):
        raise ValueError("payload is not an object")
    # The outbox stores UTF-8: a lone surrogate would fail the insert of the whole batch. Only
    # a \uD800-\uDFFF escape can make one, so the full check runs only when one appears.
    if _SURROGATE_ESCAPE.search(item):
        try:
            json.dumps(payload, ensure_ascii=False).encode()
        except UnicodeEncodeError as exc:
            raise ValueError(f"payload is not valid UTF-8 text: {exc.reason}") from None
    return NewEvent(destination, event_id, payload, _enqueued_at(stamp), raw=item)


def _enqueued_at(stamp: object) -> datetime:
    """When the item was enqueued: its stamp, or now when the stamp is missing or absurd."""
    if not isinstance(stamp, bool) and isinstance(stamp, int | float):
        try:
            return datetime.fromtimestamp(stamp, UTC)
        except (OverflowError, OSError, ValueError):
            pass  # far outside the calendar (1e20): a foreign writer's bug; count from now
    return datetime.now(UTC)
