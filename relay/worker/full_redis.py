"""A full Redis: how to tell, and how a Celery worker drains it without wake-ups.

At ``maxmemory`` under ``noeviction`` Redis refuses every command that may grow memory. The
relay's own writes are ordered to work then (see ``relay/queue/lua/take_batch.lua``), but Celery's
are not: beat cannot publish wake-ups and a worker cannot even start its consumer (kombu takes
a lock with ``SET NX``). So the Celery worker's main process watches Redis: while it is full,
it drains and delivers itself, without wake-ups, until Redis is back under its limit.
"""

from __future__ import annotations

import logging
import threading

import redis

from relay.queue.memory import RedisMemory, redis_memory
from relay.settings import Settings
from relay.worker.loop import Worker

log = logging.getLogger("relay.full_redis")


class FullRedisWatch:
    """Pumps in this process while Redis is full: Celery cannot deliver wake-ups then.

    ``relieve()`` blocks until Redis is under its limit (the worker's start-up calls it before
    Celery's consumer, which would die on a full Redis); ``start()`` checks every ``every``
    seconds in a daemon thread and relieves whenever Redis fills up later.
    """

    def __init__(self, settings: Settings, *, every: float = 2.0, pump_seconds: float = 2.0):
        self.settings = settings
        self.every = every
        self.pump_seconds = pump_seconds
        self.stopping = threading.Event()
        self._client = redis.Redis.from_url(
            settings.resolved_redis_url, socket_timeout=5, socket_connect_timeout=3
        )
        self._thread: threading.Thread | None = None

    def full(self) -> RedisMemory | None:
        """Redis's memory state if it is full, else None (also when it cannot be read)."""
        try:
            memory = redis_memory(self._client)
        except redis.RedisError as exc:
            log.debug("cannot read Redis memory: %s", exc)  # down: nothing to relieve
            return None
        return memory if memory.full else None

    def relieve(self) -> bool:
        """While Redis is full, drain and deliver here; whether it was full at all."""
        memory = self.full()
        if memory is None:
            return False
        log.error(
            "Redis is at its memory limit (%s): Celery cannot deliver wake-ups, so this "
            "process drains and delivers until Redis is back under its limit",
            memory.describe(),
        )
        while not self.stopping.is_set() and self.full() is not None:
            try:
                worker = Worker(self.settings)  # built only when Redis fills up
            except Exception as exc:  # the database down too: keep trying, say why
                log.warning("cannot start draining a full Redis yet (%s); retrying in 1s", exc)
                self.stopping.wait(1.0)
                continue
            try:
                while not self.stopping.is_set() and self.full() is not None:
                    report = worker.pump(self.pump_seconds)
                    log.info("drained a full Redis: %d delivered", report.delivered)
            finally:
                worker.close()
        if not self.stopping.is_set():
            log.warning("Redis is back under its memory limit: wake-ups flow again")
        return True

    def start(self) -> None:
        """Watch in a daemon thread until ``stop()``."""
        self._thread = threading.Thread(target=self._run, name="relay-full-redis", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(self.every):
            try:
                self.relieve()
            except Exception:  # the watch must outlive a bad moment; say what happened
                log.exception("draining a full Redis failed; trying again in %.0fs", self.every)

    def stop(self) -> None:
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._client.close()
