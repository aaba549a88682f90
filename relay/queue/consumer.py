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
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from relay.keys import Keys, lua
from relay.queue.wire import Batch, parse_items

log = logging.getLogger("relay.queue")


def consumer_id() -> str:
    """A consumer id unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
        self._take = client.register_script(lua("relay.queue", "take_batch.lua"))
        self._reap = client.register_script(lua("relay.queue", "reap.lua"))
        self._heartbeat = client.register_script(lua("relay.queue", "heartbeat.lua"))
        self._alive = client.register_script(lua("relay.queue", "worker_alive.lua"))
        self._ack = client.register_script(lua("relay.queue", "ack.lua"))

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
