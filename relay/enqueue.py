"""The web side: validate an event and push it onto the Redis queue in one write.

Imports nothing heavy (no Celery, SQLAlchemy or httpx): this runs inside web request handlers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from relay.destinations import Destination, build_destinations
from relay.errors import InvalidEvent, RelayUnavailable, UnknownDestination
from relay.keys import Keys, as_text, lua
from relay.queue import wire
from relay.queue.push import ListPusher
from relay.settings import Settings, load_settings
from relay.urls import describe_error, safe_url

if TYPE_CHECKING:
    from relay.outbox.fallback import OutboxWriter

log = logging.getLogger("relay.enqueue")


class Transaction(Protocol):
    """The caller's open database transaction, as the transactional enqueue writes into it
    (``relay.enqueue_in``: a SQLAlchemy Session or Connection; Django's ``atomic()`` block)."""

    def insert(self, events: Sequence[wire.NewEvent]) -> None:
        """Write the events' outbox rows in the transaction, without committing it."""

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` once the transaction commits; never if it (or the savepoint around
        this call) rolls back."""


class Enqueuer:
    """Validates events and writes them to the queue; one per process is enough."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.destinations: dict[str, Destination] = build_destinations(
            settings.destination_configs()
        )
        self.keys = Keys(settings.namespace)
        self.max_bytes = settings.max_event_bytes
        self.redis_url = settings.resolved_redis_url
        # The queue's one write goes through a pusher closer to the wire than redis-py's client
        # (relay/queue/push.py); the client stays for everything else (tests, tools).
        self._redis = redis.Redis.from_url(self.redis_url, **self._timeouts())
        self._pusher = ListPusher(self.redis_url, self.keys.queue, **self._timeouts())
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._outbox: OutboxWriter | None = None  # built when Redis first fails
        self._wake = self._redis.register_script(lua("relay.queue", "wake.lua"))
        self._outbox_lock = threading.Lock()

    def _timeouts(self, *, asynchronous: bool = False) -> dict[str, Any]:
        timeout = self.settings.enqueue_timeout
        # No client-side retries: the web request's added latency stays within one timeout,
        # and the outbox fallback takes over from there.
        retry = (AsyncRetry if asynchronous else Retry)(NoBackoff(), 0)
        return {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": retry}

    # -- encoding (shared by every path) ------------------------------------------------

    def encode(
        self, destination: str, payload: Mapping[str, Any], event_id: str | None = None
    ) -> tuple[str, bytes]:
        """Validate and stamp one event; return its id and the queue item's bytes."""
        dest = self.destinations.get(destination)
        if dest is None:
            raise UnknownDestination(
                destination, list(self.destinations), self.settings.key_settings()
            )
        if not isinstance(payload, Mapping):
            raise InvalidEvent(destination, "a JSON object (a dict of fields)", payload)
        now = datetime.now(UTC)
        try:
            event_id, body = dest.prepare(payload, event_id, now)
        except InvalidEvent:
            raise
        except Exception as exc:
            # The checks are total over plain values; this catches what a caller's own types
            # can still do (a Mapping whose get() raises, a str subclass with a broken strip()):
            # bad input is an InvalidEvent, never a crash of the web request.
            raise InvalidEvent(
                destination, "a payload of plain JSON values", f"{type(exc).__name__}: {exc}"
            ) from exc
        try:
            encoded = wire.encode(destination, event_id, body, now)
        except UnicodeEncodeError as exc:
            text = exc.object[max(0, exc.start - 20) : exc.end + 20]
            raise InvalidEvent(
                destination, "text that is valid Unicode (no lone surrogate such as \\ud800)", text
            ) from None
        except (TypeError, ValueError) as exc:
            raise InvalidEvent(destination, "JSON-serializable fields", str(exc)) from None
        if len(encoded) > self.max_bytes:
            raise InvalidEvent(
                destination,
                f"at most {self.max_bytes} bytes once serialized (RELAY_MAX_EVENT_BYTES)",
                f"{len(encoded)} bytes",
            )
        return event_id, encoded

    def encode_many(
        self, destination: str, payloads: Iterable[Mapping[str, Any]]
    ) -> tuple[list[str], list[bytes]]:
        ids: list[str] = []
        items: list[bytes] = []
        for index, payload in enumerate(payloads):
            try:
                event_id, item = self.encode(destination, payload)
            except InvalidEvent as exc:
                raise exc.at_index(index) from None
            ids.append(event_id)
            items.append(item)
        return ids, items

    # -- writing ------------------------------------------------------------------------

    def push(self, items: list[bytes]) -> None:
        """One RPUSH of every item; on failure, the outbox fallback or RelayUnavailable."""
        if not items:
            return
        try:
            self._pusher.push(items)
        except redis.RedisError as exc:
            self._fallback(items, exc)

    def write_in(self, transaction: Transaction, items: list[bytes]) -> None:
        """The transactional write: the items' outbox rows inside ``transaction``, and a
        wake-up for the workers once it commits. Nothing goes through Redis but the wake-up."""
        batch = wire.parse_items(items, frozenset(self.destinations), self.max_bytes)
        if batch.poison:
            item, reason = batch.poison[0]
            raise InvalidEvent(as_text(item)[:80], "an event the outbox can store", reason)
        transaction.insert(batch.events)
        transaction.on_commit(self.wake)

    def wake(self) -> None:
        """Wake a worker blocked on the queue, so that it claims a committed row at once.

        Best effort, never raises: the row is durable without it, and a worker finds it at its
        next look at the outbox (``idle_wait``, 0.5 s) if Redis does not take the wake-up.
        """
        try:
            self._wake(keys=[self.keys.queue], args=[wire.WAKE])
        except redis.RedisError as exc:
            log.debug("no wake-up sent (%s): the workers find the row at their next poll", exc)

    async def apush(self, items: list[bytes]) -> None:
        if not items:
            return
        try:
            await self._async_client().rpush(self.keys.queue, *items)
        except redis.RedisError as exc:
            await asyncio.to_thread(self._fallback, items, exc)

    def _async_client(self) -> redis.asyncio.Redis:
        # redis.asyncio connections belong to the loop that made them.
        loop = asyncio.get_running_loop()
        client = self._async.get(loop)
        if client is None:
            client = redis.asyncio.Redis.from_url(
                self.redis_url, **self._timeouts(asynchronous=True)
            )
            self._async[loop] = client
        return client

    def _fallback(self, items: list[bytes], exc: redis.RedisError) -> None:
        url = self.redis_url
        redis_cause = f"Redis at {safe_url(url)} failed: {describe_error(exc, url)}"
        try:
            self._outbox_writer().write(items)
        except RelayUnavailable as db_exc:
            raise RelayUnavailable(f"{redis_cause}; and {db_exc}") from exc

    def _outbox_writer(self) -> OutboxWriter:
        with self._outbox_lock:
            if self._outbox is None:
                from relay.outbox.fallback import (
                    OutboxWriter,  # SQLAlchemy loads only when Redis fails
                )

                self._outbox = OutboxWriter(self.settings, frozenset(self.destinations))
            return self._outbox

    async def aclose(self) -> None:
        """Close the async connections of the running event loop (at app shutdown)."""
        client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        self._pusher.close()
        self._redis.close()
        with self._outbox_lock:
            if self._outbox is not None:
                self._outbox.close()


_default: Enqueuer | None = None
_default_lock = threading.Lock()


def configure(settings: Settings | None = None, **overrides: Any) -> Enqueuer:
    """(Re)build the process's enqueuer from ``settings`` or the environment; return it."""
    global _default
    with _default_lock:
        if _default is not None:
            _default.close()
        _default = Enqueuer(settings or load_settings(**overrides))
        return _default


def default_enqueuer() -> Enqueuer:
    """The process's enqueuer, built from the environment on first use."""
    if _default is None:
        return configure()
    return _default


def enqueue(destination: str, payload: Mapping[str, Any], *, event_id: str | None = None) -> str:
    """Validate ``payload`` for ``destination`` and queue it in one Redis write.

    Returns the event id (stamped when absent). Raises :class:`relay.InvalidEvent` naming the
    field when the payload breaks the destination's schema (nothing is written), and
    :class:`relay.RelayUnavailable` when neither Redis nor the outbox database takes the event.
    """
    client = default_enqueuer()
    event_id, item = client.encode(destination, payload, event_id)
    client.push([item])
    return event_id


def enqueue_many(destination: str, payloads: Iterable[Mapping[str, Any]]) -> list[str]:
    """Queue many events for one destination in one round trip; all or nothing.

    An invalid item rejects the whole call with an :class:`relay.InvalidEvent` naming its index.
    """
    client = default_enqueuer()
    ids, items = client.encode_many(destination, payloads)
    client.push(items)
    return ids


async def aenqueue(
    destination: str, payload: Mapping[str, Any], *, event_id: str | None = None
) -> str:
    """:func:`enqueue` for async handlers (redis.asyncio); same checks, same single write."""
    client = default_enqueuer()
    event_id, item = client.encode(destination, payload, event_id)
    await client.apush([item])
    return event_id
