"""What operator commands see and do: the queue, the outbox, pauses and heartbeats, in one place.

:class:`Admin` opens Redis and the outbox lazily and translates their failures into
:class:`~relay.errors.Unreachable` naming which one (URL without credentials). It returns the
typed results of :mod:`relay.ops.reports` and :mod:`relay.outbox.queries`, ready for a table
or (through :func:`~relay.ops.reports.plain`) ``--json``; texts that could carry a key are
passed through :meth:`Admin.redact`, which is the destinations' own redaction. The CLI and
the metrics exporter read the relay only through it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError

from relay.destinations import Destination, build_destinations
from relay.errors import ConfigError, EventNotFound, UnknownDestination, Unreachable
from relay.keys import Keys, as_text
from relay.limiter.budget import RateLimit, plan
from relay.limiter.pauses import Pauses
from relay.ops.reports import (
    DestinationStatus,
    EventDetail,
    Quarantine,
    QuarantineEntry,
    RedisState,
    Resumed,
    Selection,
    Skipped,
    StatusReport,
    Workers,
)
from relay.outbox import queries as rows
from relay.outbox.engine import make_engine
from relay.outbox.migrate import ensure_current
from relay.outbox.queries import Backlog, Filters, OutboxRow, Overview, Progress
from relay.outbox.schema import Status
from relay.queue import embedded
from relay.queue.memory import FULL_ADVICE, RedisMemory, redis_memory
from relay.settings import DestinationConfig, Settings
from relay.urls import describe_error, safe_url

QUEUE_SCAN_CAP = 10_000
"""Per-destination queue counts read the whole list; above this length they are skipped."""


class Admin:
    """Operator access to one relay (its settings' Redis namespace and outbox)."""

    def __init__(
        self, settings: Settings, *, start_embedded: bool = True, check_schema: bool = True
    ) -> None:
        self.settings = settings
        self.check_schema = check_schema
        self.keys = Keys(settings.namespace)
        self.configs: dict[str, DestinationConfig] = settings.destination_configs()
        self.destinations = list(self.configs)
        self.start_embedded = start_embedded
        self._engine: Engine | None = None
        self._redis: redis.Redis | None = None
        self._redactors: list[Destination] = list(build_destinations(self.configs).values())

    # -- connections ----------------------------------------------------------------------

    @property
    def redis_where(self) -> str:
        return f"Redis at {safe_url(self.settings.resolved_redis_url)}"

    @property
    def database_where(self) -> str:
        return f"the outbox database at {safe_url(self.settings.resolved_database_url)}"

    @property
    def redis(self) -> redis.Redis:
        if self._redis is None:
            if self.settings.embedded_redis and self.start_embedded:
                embedded.ensure_running(self.settings.home)
            self._redis = redis.Redis.from_url(
                self.settings.resolved_redis_url, socket_timeout=5, socket_connect_timeout=3
            )
        return self._redis

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.settings.resolved_database_url, connect_timeout=5)
            try:
                if self.check_schema:
                    # The embedded outbox migrates itself, as the worker does.
                    with self.db_errors():
                        ensure_current(engine, self.settings.resolved_database_url)
            except BaseException:
                engine.dispose()
                raise
            self._engine = engine
        return self._engine

    @contextlib.contextmanager
    def redis_errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise Unreachable(f"{self.redis_where} does not answer: {self._reason(exc)}") from exc

    @contextlib.contextmanager
    def db_errors(self) -> Iterator[None]:
        try:
            yield
        except SQLAlchemyError as exc:
            reason = self._reason(exc)
            raise Unreachable(f"{self.database_where} does not answer: {reason}") from exc

    def _reason(self, exc: BaseException) -> str:
        """``ErrorClass: first line`` of ``exc``, without any URL credential or key."""
        urls = (self.settings.resolved_redis_url, self.settings.resolved_database_url)
        # Cut after the keys are masked: a key cut in half would no longer be found.
        return self.redact(describe_error(exc, *urls, limit=None))[:300]

    def close(self) -> None:
        if self._redis is not None:
            self._redis.close()
            self._redis = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    def redact(self, text: str) -> str:
        """``text`` with every configured destination's secrets masked (its own redaction)."""
        for destination in self._redactors:
            text = destination.redact(text)
        return text

    def check_destination(self, name: str | None, *, configured: bool = False) -> None:
        """Raise UnknownDestination unless ``name`` is configured (or, unless ``configured``, it
        has rows in the outbox)."""
        if name is None or name in self.configs:
            return
        if not configured:
            with self.db_errors():
                if name in rows.destinations_in_outbox(self.engine):
                    return
        raise UnknownDestination(name, self.destinations)

    # -- Redis state ----------------------------------------------------------------------

    def memory(self) -> RedisMemory:
        with self.redis_errors():
            return redis_memory(self.redis)

    def queue_length(self) -> int:
        with self.redis_errors():
            return int(self.redis.llen(self.keys.queue))

    def quarantine_length(self) -> int:
        with self.redis_errors():
            return int(self.redis.llen(self.keys.quarantine))

    def quarantine(self, recent: int = 5) -> Quarantine:
        """Quarantined items: how many, how many ever, and the newest reasons (not the items)."""
        with self.redis_errors():
            pipe = self.redis.pipeline(transaction=False)  # MULTI fails on a full Redis
            pipe.llen(self.keys.quarantine)
            pipe.get(self.keys.quarantined_total)
            pipe.lrange(self.keys.quarantine, 0, recent - 1)
            length, total, newest = pipe.execute()
        entries: list[QuarantineEntry] = []
        for raw in newest:
            try:
                entry = json.loads(raw)
                at = datetime.fromtimestamp(float(entry.get("at", 0)), UTC).isoformat()
                entries.append(QuarantineEntry(self.redact(str(entry.get("reason"))), at))
            except (ValueError, TypeError):
                entries.append(QuarantineEntry("unreadable quarantine entry", None))
        return Quarantine(int(length), int(total or 0), entries)

    def queued_by_destination(self) -> dict[str, int] | None:
        """Queue items per destination, or None when the queue is too long to read whole."""
        with self.redis_errors():
            if self.redis.llen(self.keys.queue) > QUEUE_SCAN_CAP:
                return None
            items = self.redis.lrange(self.keys.queue, 0, QUEUE_SCAN_CAP - 1)
        counts: dict[str, int] = {}
        for raw in items:
            try:
                name = json.loads(raw).get("d")
            except (ValueError, AttributeError):
                continue
            if isinstance(name, str):
                counts[name] = counts.get(name, 0) + 1
        return counts

    def pauses(self) -> dict[str, dict[str, Any]]:
        with self.redis_errors():
            return Pauses(self.redis, self.keys).all()

    def pause(self, name: str, reason: str) -> None:
        """Pause ``name`` for every worker until resumed (no probes)."""
        self.check_destination(name, configured=True)
        with self.redis_errors():
            Pauses(self.redis, self.keys).pause(name, reason, by="operator")

    def resume(self, name: str) -> Resumed:
        """Resume ``name``: whether it was paused, how many waiting events are due now."""
        self.check_destination(name, configured=True)
        with self.redis_errors():
            was_paused = Pauses(self.redis, self.keys).resume(name)
        with self.db_errors():
            return Resumed(was_paused, rows.make_due(self.engine, name))

    def heartbeats(self) -> dict[str, float]:
        """Worker id → unix time of its last heartbeat."""
        with self.redis_errors():
            raw = self.redis.hgetall(self.keys.workers)
        beats: dict[str, float] = {}
        for worker, value in raw.items():
            with contextlib.suppress(ValueError):
                beats[as_text(worker)] = float(value)
        return beats

    @staticmethod
    def now_ts() -> float:
        return time.time()

    # -- outbox state ---------------------------------------------------------------------

    def backlog(self) -> dict[str, Backlog]:
        with self.db_errors():
            return rows.backlog(self.engine)

    def overview(self) -> Overview:
        """Rows by destination and status, and the oldest pending event's age, in one read."""
        with self.db_errors():
            return rows.overview(self.engine)

    def counts(self, filters: Filters | None = None) -> dict[str, dict[str, int]]:
        """Rows (those matching ``filters``) by destination and status."""
        with self.db_errors():
            return rows.status_counts(self.engine, filters)

    def dead_reasons(self, filters: Filters | None = None) -> dict[str, dict[str, int]]:
        """Dead rows (those matching ``filters``) by destination and reason."""
        with self.db_errors():
            return rows.dead_reasons(self.engine, filters)

    def rate_per_second(self, name: str) -> float | None:
        """The sustained send rate the limiter allows ``name`` (under its documented limit)."""
        config = self.configs.get(name)
        if config is None or not config.rate_limit:
            return None
        try:
            return plan(RateLimit.parse(config.rate_limit), self.settings.limit_jitter).rate
        except ValueError:
            return None

    def status(self, alive_within: float = 60.0) -> StatusReport:
        """Everything ``relay status`` shows."""
        queue = self.queue_length()
        memory = self.memory()
        queued = self.queued_by_destination()
        paused = self.pauses()
        beats = self.heartbeats()
        seen = self.overview()
        counts = seen.counts
        reasons = self.dead_reasons()
        now = time.time()
        names = sorted(set(self.configs) | set(counts) | set(paused) | set(queued or {}))
        destinations: dict[str, DestinationStatus] = {}
        for name in names:
            by_status = counts.get(name, {})
            pending = by_status.get("pending", 0)
            record = paused.get(name)
            rate = self.rate_per_second(name)
            in_queue = None if queued is None else queued.get(name, 0)
            ahead = pending + (in_queue or 0)
            destinations[name] = DestinationStatus(
                configured=name in self.configs,
                queued=in_queue,
                pending=pending,
                delivered=by_status.get("delivered", 0),
                dead=by_status.get("dead", 0),
                discarded=by_status.get("discarded", 0),
                oldest_pending_age=seen.oldest_pending_age.get(name),
                dead_reasons=reasons.get(name, {}),
                paused=record is not None,
                paused_reason=self.redact(str(record.get("reason"))) if record else None,
                paused_by=record.get("by") if record else None,
                paused_since=_iso_ts(record.get("since")) if record else None,
                limit=self.configs[name].rate_limit if name in self.configs else None,
                rate_per_second=round(rate, 3) if rate else None,
                drain_seconds=round(ahead / rate, 1) if rate and not record else None,
            )
        return StatusReport(
            queue=queue,
            redis=RedisState(
                used_memory=memory.used,
                maxmemory=memory.maxmemory,
                maxmemory_policy=memory.policy,
                full=memory.full,
            ),
            quarantine=self.quarantine(),
            workers=Workers(
                alive=sum(1 for at in beats.values() if now - at <= alive_within),
                newest_heartbeat_age=round(now - max(beats.values()), 1) if beats else None,
            ),
            destinations=destinations,
        )

    # -- outbox rows ----------------------------------------------------------------------

    def list_rows(self, filters: Filters, limit: int | None) -> list[OutboxRow]:
        """Rows matching ``filters``, most recently changed first (at most ``limit``)."""
        self.check_destination(filters.destination)
        with self.db_errors():
            return rows.list_rows(self.engine, filters, limit)

    def events(self, event_id: str, destination: str | None) -> list[EventDetail]:
        """The rows of ``event_id`` (one per destination, or only ``destination``'s) with
        payload and attempts; EventNotFound when there is none."""
        self.check_destination(destination)
        with self.db_errors():
            found = rows.find_rows(self.engine, [event_id], destination)
            if not found:
                raise EventNotFound(not_found([event_id], destination))
            return [
                EventDetail(
                    OutboxRow.of(row), row.payload, rows.attempt_history(self.engine, row.id)
                )
                for row in found
            ]

    def select(
        self,
        event_ids: Sequence[str],
        destination: str | None,
        allowed: Sequence[str],
        *,
        dead_with_reason: str | None = None,
        all_dead: bool = False,
    ) -> Selection:
        """The rows a retry or discard applies to: every dead row (``all_dead``, narrowed by
        ``destination`` and ``dead_with_reason``), or the named events whose status is in
        ``allowed`` (the others are skipped); EventNotFound for a named event with no row."""
        self.check_destination(destination)
        with self.db_errors():
            if all_dead:
                statuses = [Status.DEAD.value]
                filters = Filters(statuses, destination, reason=dead_with_reason)
                return Selection(None, filters, [], rows.count(self.engine, filters))
            found = rows.find_rows(self.engine, event_ids, destination)
        known = {row.event_id for row in found}
        missing = [i for i in dict.fromkeys(event_ids) if i not in known]
        if missing:
            raise EventNotFound(not_found(missing, destination))
        chosen = [row.id for row in found if row.status in allowed]
        skipped = [
            Skipped(row.event_id, row.destination, row.status)
            for row in found
            if row.status not in allowed
        ]
        return Selection(chosen, None, skipped, len(chosen))

    def retry(self, selection: Selection, progress: Progress | None = None) -> int:
        """Put the selected dead (or discarded) rows back to pending; how many."""
        with self.db_errors():
            return rows.retry(
                self.engine, ids=selection.ids, filters=selection.filters, progress=progress
            )

    def discard(self, selection: Selection, progress: Progress | None = None) -> int:
        """Mark the selected dead or pending rows discarded (not those being sent); how many."""
        with self.db_errors():
            return rows.discard(
                self.engine, ids=selection.ids, filters=selection.filters, progress=progress
            )

    def prunable(self, older_than: float) -> int:
        """How many delivered and discarded rows are unchanged for ``older_than`` seconds."""
        with self.db_errors():
            return rows.count_prunable(self.engine, older_than)

    def prune(self, older_than: float, batch: int = 1000, progress: Progress | None = None) -> int:
        """Delete those rows (and their attempts), in batches of ``batch``; how many."""
        with self.db_errors():
            return rows.prune(self.engine, older_than, batch=batch, progress=progress)

    def health(self, max_age: float | None) -> str | None:
        """None when Redis and the outbox answer and a worker beat within ``max_age`` s (None:
        workers are not checked); else the first problem, in one line."""
        try:
            with self.redis_errors():
                self.redis.ping()
            memory = self.memory()
            with self.db_errors(), self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except (Unreachable, ConfigError) as exc:
            return str(exc)
        if memory.full:
            return f"{self.redis_where} is at its memory limit ({memory.describe()}): {FULL_ADVICE}"
        if max_age is None:
            return None
        beats = self.heartbeats()
        if not beats:
            return (
                "no worker heartbeat: no Celery worker has run a pump on this relay "
                "(are the worker and beat running?)"
            )
        age = time.time() - max(beats.values())
        if age > max_age:
            return (
                f"the newest worker heartbeat is {age:.1f}s old (limit {max_age:g}s): "
                "workers are down or not woken (is beat running?)"
            )
        return None


def forget_stale_workers(client: redis.Redis, keys: Keys, older_than: float) -> int:
    """Drop heartbeat entries of workers silent for ``older_than`` s: a killed worker never
    removes its own, and the hash would grow with every crash."""
    now = time.time()
    stale = [
        worker
        for worker, at in client.hgetall(keys.workers).items()
        if now - float(at) > older_than
    ]
    if stale:
        client.hdel(keys.workers, *stale)
    return len(stale)


def not_found(event_ids: Sequence[str], destination: str | None) -> str:
    """Why ``relay outbox show|retry|discard`` found no row, and how to check the id."""
    shown = ", ".join(repr(i) for i in event_ids[:5]) + (" …" if len(event_ids) > 5 else "")
    where = f" for destination {destination}" if destination else ""
    return (
        f"no outbox row has event id {shown}{where}; check the id with "
        "`relay outbox list` (events still in the Redis queue have no row yet)"
    )


def _iso_ts(value: Any) -> str | None:
    try:
        return datetime.fromtimestamp(float(value), UTC).isoformat()
    except (TypeError, ValueError):
        return None
