"""The worker: drain the queue into the outbox and deliver due rows, in one process.

``Worker.pump`` is what the Celery task runs; ``Worker.flush`` is ``relay flush``: drain and
deliver until nothing is due, then stop. Both call the same ``drain`` and ``dispatch``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import redis
from sqlalchemy.exc import SQLAlchemyError

from relay.destinations import build_destinations
from relay.errors import LimiterUnavailable
from relay.keys import Keys
from relay.limiter import RedisLimiter, budgets_for
from relay.limiter.base import Limiter
from relay.limiter.pauses import Pauses
from relay.outbox.engine import make_engine
from relay.outbox.migrate import ensure_current
from relay.outbox.store import Inserted, Outbox
from relay.queue import embedded
from relay.queue.consumer import Queue
from relay.settings import Settings
from relay.worker import failpoints, metrics
from relay.worker.delivery import Dispatcher, DispatchReport
from relay.worker.retry import RetryPolicy
from relay.worker.transport import HttpClient

log = logging.getLogger("relay.worker")

WAKE_RECHECK = 0.01
WAKE_RECHECKS = 5
"""After a wake-up with nothing to claim, look this many times, this many seconds apart."""


@dataclass
class DrainReport:
    taken: int = 0
    inserted: int = 0
    quarantined: int = 0
    woken: int = 0
    """Wake-ups taken (``wire.WAKE``, sent after transactional enqueues): not in ``taken``."""

    @property
    def duplicates(self) -> int:
        return self.taken - self.inserted - self.quarantined


@dataclass
class FlushReport:
    """Everything one flush did, and what it left behind."""

    drained: DrainReport = field(default_factory=DrainReport)
    dispatched: DispatchReport = field(default_factory=DispatchReport)
    paused: dict[str, str] = field(default_factory=dict)
    pending_left: int = 0

    @property
    def exit_code(self) -> int:
        """0 all delivered; 1 something ended dead; 2 a destination is paused; 3 left pending."""
        if self.dispatched.dead:
            return 1
        if self.paused:
            return 2
        if self.pending_left:
            return 3
        return 0


class Worker:
    """Owns the connections one worker process needs; build it after any fork."""

    def __init__(self, settings: Settings, *, limiter: Limiter | None = None) -> None:
        self.settings = settings
        settings.check_lease()
        self.destinations = build_destinations(settings.destination_configs())
        if settings.embedded_redis:
            embedded.ensure_running(settings.home)
        self.keys = Keys(settings.namespace)
        self.redis = redis.Redis.from_url(
            settings.resolved_redis_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=15,
        )
        warn_if_redis_can_lose_events(self.redis)
        self.engine = make_engine(settings.resolved_database_url)
        ensure_current(self.engine, settings.resolved_database_url)
        self.outbox = Outbox(self.engine)
        self.queue = Queue(
            self.redis,
            self.keys,
            heartbeat_seconds=settings.heartbeat_seconds,
            known_destinations=frozenset(self.destinations),
            max_item_bytes=settings.max_event_bytes,
        )
        self.pauses = Pauses(self.redis, self.keys, probe_seconds=settings.pause_probe_seconds)
        # Keep-alive connections for every sending thread to every destination: a pool
        # smaller than that makes requests queue for a connection, or close another
        # destination's idle one and open a new one (a handshake) per request.
        self.http = HttpClient(
            settings.connect_timeout,
            settings.read_timeout,
            pool=settings.send_concurrency * max(1, len(self.destinations)),
        )
        self.limiter = limiter or self.build_limiter()
        self.dispatcher = Dispatcher(
            self.outbox,
            self.destinations,
            self.http,
            self.pauses,
            self.limiter,
            {name: retry_policy(settings, name) for name in self.destinations},
            lease_seconds=settings.lease_seconds,
            concurrency=settings.send_concurrency,
            send_seconds=settings.send_seconds,
            record_patience=min(30.0, settings.lease_seconds / 2),
        )
        self.stopping = threading.Event()

    def build_limiter(self) -> RedisLimiter:
        """The shared buckets of every scope this worker's destinations consume."""
        settings = self.settings
        return RedisLimiter(
            self.redis,
            self.keys,
            budgets_for(self.destinations.values(), settings.limit_jitter),
            jitter=settings.limit_jitter,
            pause_cap=settings.limit_pause_cap,
            recovery_seconds=settings.limit_recovery_seconds,
        )

    # -- the two steps ------------------------------------------------------------------

    def drain(self, wait: float = 0.0) -> DrainReport:
        """Move one batch from Redis into the outbox (deduplicated); quarantine poison items."""
        batch = self.queue.take(self.settings.batch_size, wait=wait)
        report = DrainReport(taken=len(batch) - batch.wakeups, woken=batch.wakeups)
        if not batch:
            return report
        failpoints.hit("drain.after_take")
        counts = Inserted()
        try:
            refused = self.outbox.insert_storable(batch.events, counts)
        finally:
            # An outage halfway through a split batch: the halves committed before it count.
            count_drained(counts)
        report.inserted = counts.total
        failpoints.hit("drain.after_commit")
        poison = batch.poison + [(event.raw, reason) for event, reason in refused]
        # Crash here (after the commit, before the ack): the reaper puts the batch back and
        # the outbox's unique key turns the second insert into a no-op.
        self.queue.ack(poison)
        report.quarantined = len(poison)
        if report.taken:
            log.info(
                "drained %d items: %d new, %d duplicates, %d quarantined",
                report.taken,
                report.inserted,
                report.duplicates,
                report.quarantined,
            )
        return report

    def dispatch(self) -> DispatchReport:
        """Deliver one round of due rows."""
        return self.dispatcher.dispatch_due(self.settings.dispatch_batch)

    # -- loops --------------------------------------------------------------------------

    def pump(self, seconds: float, idle_wait: float = 0.5) -> DispatchReport:
        """Drain and deliver for ``seconds``, waking at once when an event arrives."""
        total = DispatchReport()
        deadline = time.monotonic() + seconds
        next_reap = 0.0
        rechecks = 0
        while not self.stopping.is_set() and time.monotonic() < deadline:
            try:
                if time.monotonic() >= next_reap:
                    self.queue.reap()
                    self.queue.alive()
                    next_reap = time.monotonic() + self.settings.heartbeat_seconds / 3
                drained = self.drain()
                round_ = self.dispatch()
                total.add(round_)
                rechecks = 0 if round_.claimed else rechecks
                if not drained.taken and not round_.claimed:
                    remaining = deadline - time.monotonic()
                    # Woken, yet nothing to claim: a Connection's wake-up is sent with its
                    # COMMIT (relay.transactional), so look again shortly, not a whole wait on.
                    idle, rechecks = (WAKE_RECHECK, rechecks - 1) if rechecks else (idle_wait, 0)
                    # Rate-limited: come back when the bucket has a slot, not a whole idle wait on.
                    wait = min([idle, remaining, *round_.limited.values()])
                    if self.drain(wait=max(0.01, wait) if remaining > 0 else 0.0).woken:
                        rechecks = WAKE_RECHECKS
            except (redis.RedisError, SQLAlchemyError, LimiterUnavailable) as exc:
                # Redis or the database restarting: the work stays where it is; try again.
                log.warning("worker step failed, retrying in 1s: %s: %s", type(exc).__name__, exc)
                self.stopping.wait(1.0)
        return total

    def flush(self, max_wait: float = 60.0) -> FlushReport:
        """Drain and deliver until nothing is due; wait up to ``max_wait`` s for retries."""
        report = FlushReport()
        self.queue.reap()
        while not self.stopping.is_set():
            drained = self.drain()
            report.drained.taken += drained.taken
            report.drained.inserted += drained.inserted
            report.drained.quarantined += drained.quarantined
            round_ = self.dispatch()
            report.dispatched.add(round_)
            if drained.taken or round_.claimed:
                continue
            wait = self._seconds_until_work(round_.limited)
            if wait is None or wait > max_wait:
                break
            self.stopping.wait(max(0.0, min(wait, 1.0)) + 0.01)
        report.paused = {name: rec["reason"] for name, rec in self.pauses.all().items()}
        report.pending_left = self.outbox.pending()
        return report

    def _seconds_until_work(self, limited: dict[str, float] | None = None) -> float | None:
        """Seconds until a pending row becomes due or a paused destination may be probed.

        ``limited`` destinations (no send slot free) count from when their bucket has one.
        """
        limited = limited or {}
        paused = self.pauses.all()
        active = [name for name in self.destinations if name not in paused]
        waits: list[float] = []
        free = [name for name in active if name not in limited]
        # On the database's clock: this host's may be off by more than any wait.
        due_in = self.outbox.seconds_until_due(free) if free else None
        if due_in is not None:
            waits.append(due_in)
        for name in active:
            if name in limited and self.outbox.next_due_at([name]) is not None:
                waits.append(limited[name])
        probing = [name for name, record in paused.items() if record.get("probe_at")]
        if probing and self.outbox.next_due_at(probing) is not None:
            now = time.time()
            waits += [paused[name]["probe_at"] - now for name in probing]
        return min(waits) if waits else None

    def close(self) -> None:
        self.stopping.set()
        self.dispatcher.close()
        self.http.close()
        try:
            if not self.redis.llen(self.queue.processing):
                self.queue.leave()
            self.redis.hdel(self.keys.workers, self.queue.consumer)
        except redis.RedisError as exc:
            log.warning("could not deregister consumer on close: %s", exc)
        self.redis.close()
        self.engine.dispose()


def count_drained(counts: Inserted) -> None:
    """Count what one drain put into the outbox, per destination, in the worker's metrics."""
    for destination in sorted(counts.new.keys() | counts.duplicates.keys()):
        metrics.drained(destination, counts.new[destination], counts.duplicates[destination])


def retry_policy(settings: Settings, destination: str) -> RetryPolicy:
    """``destination``'s retry policy: its ``[retry.NAME]`` table over the global settings."""
    values = settings.retry_settings(destination)
    own = settings.retry.get(destination)

    def origin(name: str) -> str:
        """The setting a dead row's reason names: the table's, or the global variable."""
        if own is not None and getattr(own, name) is not None:
            return f"[retry.{destination}] {name}"
        return f"RELAY_{name.upper()}"

    return RetryPolicy(
        base=values["backoff_base"],
        cap=values["backoff_cap"],
        max_attempts=values["max_attempts"],
        max_age=values["max_age_seconds"],
        retry_after_cap=values["retry_after_cap"],
        attempts_setting=origin("max_attempts"),
        age_setting=origin("max_age_seconds"),
    )


def warn_if_redis_can_lose_events(client: redis.Redis) -> None:
    """Log a warning if this Redis would evict keys or keeps nothing across a restart."""
    try:
        config = client.config_get("maxmemory-policy") | client.config_get("appendonly")
        config |= client.config_get("save")
    except redis.ResponseError as exc:
        # Managed Redis often forbids CONFIG: nothing to check, say so once.
        log.info("cannot read the Redis configuration (%s); check persistence yourself", exc)
        return
    policy = config.get("maxmemory-policy", "noeviction")
    if policy != "noeviction":
        log.warning(
            "Redis maxmemory-policy is %s: under memory pressure it may evict queued events; "
            "set it to noeviction (see config/redis.conf)",
            policy,
        )
    if config.get("appendonly") != "yes" and not config.get("save"):
        log.warning(
            "Redis has neither AOF nor RDB persistence: a Redis restart loses queued events; "
            "set appendonly yes (see config/redis.conf)"
        )
