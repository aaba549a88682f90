"""The Redis side of the worker: take batches off the queue safely, reap dead consumers.

A batch moves atomically (Lua) from the queue into this consumer's processing list, guarded by
a heartbeat key. The list is deleted only after the outbox commit; if the worker dies first,
the reaper returns the list to the queue once the heartbeat expires, and the outbox's unique
key makes the second insert a no-op.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import redis

from relay import lua
from relay.keys import Keys
from relay.outbox import NewEvent

log = logging.getLogger("relay.queue")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def consumer_id() -> str:
    """A consumer id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class Batch:
    """Items taken from the queue: parsed events and the raw items that could not be parsed."""

    events: list[NewEvent] = field(default_factory=list)
    poison: list[tuple[bytes, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.events) + len(self.poison)


def parse_items(raw: list[bytes], known: frozenset[str], max_bytes: int) -> Batch:
    """Parse queue items; the ones that cannot become an outbox row go to ``poison``."""
    batch = Batch()
    for item in raw:
        try:
            batch.events.append(_parse_one(item, known, max_bytes))
        except ValueError as exc:
            batch.poison.append((item, str(exc)))
        except Exception as exc:  # one odd item must never block the drain of the rest
            batch.poison.append((item, f"unreadable: {type(exc).__name__}: {exc}"))
    return batch


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not JSON: {name} is not a JSON value")


def _parse_one(item: bytes, known: frozenset[str], max_bytes: int) -> NewEvent:
    if len(item) > max_bytes:
        raise ValueError(f"item of {len(item)} bytes is over the {max_bytes} byte limit")
    try:
        data: Any = json.loads(item, parse_constant=_reject_constant)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
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


def _raw(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


class Queue:
    """One consumer's view of the relay's Redis queue."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        consumer: str | None = None,
        heartbeat_seconds: float = 30.0,
        known_destinations: frozenset[str] = frozenset(),
        max_item_bytes: int = 32 * 1024,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.consumer = consumer or consumer_id()
        self.heartbeat_ms = int(heartbeat_seconds * 1000)
        self.known = known_destinations
        # The limit is on the whole item; enqueue() checks the same, so only foreign or
        # hand-made items ever exceed it.
        self.max_item_bytes = max_item_bytes
        self._take = client.register_script(lua.source("take_batch.lua"))
        self._reap = client.register_script(lua.source("reap.lua"))
        self._heartbeat = client.register_script(lua.source("heartbeat.lua"))
        self._alive = client.register_script(lua.source("worker_alive.lua"))
        self._ack = client.register_script(lua.source("ack.lua"))

    @property
    def processing(self) -> str:
        return self.keys.processing(self.consumer)

    def beat(self, ttl: float | None = None) -> None:
        """Refresh this consumer's heartbeat (for ``ttl`` seconds, default the heartbeat's)."""
        ttl_ms = self.heartbeat_ms if ttl is None else int(ttl * 1000)
        keys = [self.keys.heartbeat(self.consumer), self.keys.consumers]
        self._heartbeat(keys=keys, args=[ttl_ms, self.consumer])

    def alive(self) -> None:
        """Tell ``relay health`` and ``relay status`` that this worker is running."""
        self._alive(keys=[self.keys.workers], args=[self.consumer, time.time()])

    def take(self, batch_size: int, wait: float = 0.0) -> Batch:
        """Take up to ``batch_size`` items into the processing list and parse them.

        With ``wait`` > 0 and an empty queue, block up to ``wait`` seconds for the first item,
        so an event enqueued on an idle relay is picked up at once.
        """
        raw = self._take_raw(batch_size)
        if not raw and wait > 0:
            # The heartbeat must outlive the block, or the reaper could take the moved item.
            self.beat(max(self.heartbeat_ms / 1000, wait + 5))
            timeout: Any = wait  # redis-py types it int; Redis takes fractional seconds
            try:
                moved = self.redis.blmove(
                    self.keys.queue, self.processing, timeout, "LEFT", "RIGHT"
                )
            except redis.exceptions.OutOfMemoryError:
                # A full Redis refuses BLMOVE (it may grow memory). The queue is empty, so
                # something else fills Redis: poll instead of blocking.
                time.sleep(wait)
                moved = None
            if moved:
                raw = self._take_raw(batch_size)
        return self.parse(raw)

    def _take_raw(self, batch_size: int) -> list[bytes]:
        keys = [self.keys.queue, self.processing, self.keys.heartbeat(self.consumer)]
        keys.append(self.keys.consumers)
        result = self._take(keys=keys, args=[batch_size, self.heartbeat_ms, self.consumer])
        return list(result)

    def parse(self, raw: list[bytes]) -> Batch:
        return parse_items(raw, self.known, self.max_item_bytes)

    def ack(self, poison: Sequence[tuple[bytes, str]] = ()) -> None:
        """The batch is in the outbox: drop the processing list, quarantine ``poison``.

        One script, so a crash cannot quarantine the same items twice; it works on a full
        Redis too (its first write frees the processing list).
        """
        entries = [
            json.dumps(
                {
                    "reason": reason,
                    "item": item.decode("utf-8", "replace"),
                    "at": time.time(),
                    "consumer": self.consumer,
                }
            )
            for item, reason in poison
        ]
        keys = [self.processing, self.keys.quarantine, self.keys.quarantined_total]
        self._ack(keys=keys, args=entries)
        for _, reason in poison:
            log.error("quarantined a queue item that cannot be delivered: %s", reason)

    def reap(self) -> int:
        """Return batches of consumers whose heartbeat expired to the queue; how many items."""
        returned = sum(self.return_batch(c) or 0 for c in self.dead_consumers())
        if returned:
            log.warning("returned %d items of dead consumers to the queue", returned)
        return returned

    def dead_consumers(self) -> list[bytes]:
        """Consumer ids (as stored) whose heartbeat has expired."""
        consumers = [_raw(c) for c in self.redis.smembers(self.keys.consumers)]
        if not consumers:
            return []
        pipe = self.redis.pipeline(transaction=False)  # MULTI fails on a full Redis
        for consumer in consumers:
            pipe.exists(self._key(self.keys.heartbeat, consumer))
        alive = pipe.execute()
        return [consumer for consumer, beating in zip(consumers, alive, strict=True) if not beating]

    def return_batch(self, consumer: bytes) -> int | None:
        """Move ``consumer``'s processing list back to the head of the queue and forget the
        consumer; how many items went back, or None when it beat again meanwhile."""
        keys: list[str | bytes] = [
            self.keys.queue,
            self.keys.consumers,
            self._key(self.keys.heartbeat, consumer),
            self._key(self.keys.processing, consumer),
        ]
        returned = int(self._reap(keys=keys, args=[consumer]))
        return None if returned < 0 else returned

    @staticmethod
    def _key(name: Callable[[str], str], consumer: bytes) -> bytes:
        # Byte for byte what the consumer wrote, even for an id that is not UTF-8 (a foreign
        # writer's): the reaper must name exactly the keys that consumer used.
        return name(consumer.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")

    def leave(self) -> None:
        """On a clean exit: this consumer owns nothing any more."""
        # No MULTI: a full Redis refuses every command queued in a transaction, even a DEL.
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(self.keys.heartbeat(self.consumer))
        pipe.srem(self.keys.consumers, self.consumer)
        pipe.execute()

    def length(self) -> int:
        return int(self.redis.llen(self.keys.queue))
