"""Token buckets in Redis, shared by every worker process on every host.

Each scope is one hash (``Keys.limiter(scope)``) run by GCRA in Lua scripts (``relay/limiter/
lua/``). Time comes from Redis ``TIME`` only: a worker never sends its own clock, so
hosts with skewed clocks cannot over-admit. A reservation answers "send in N µs"; the worker
sleeps that long on its own monotonic clock, and a slot it missed by more than half the jitter
margin is thrown away and reserved again, so lateness stays inside the margin the budget allows.

The limiter fails closed: when Redis cannot be reached it raises
:class:`~relay.limiter.LimiterUnavailable` and nothing is sent; the next call that gets through
logs the recovery.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis

from relay.destinations import Destination
from relay.destinations.rates import RateLimit
from relay.errors import ConfigError, LimiterUnavailable
from relay.keys import Keys, lua
from relay.limiter.base import Clearance, Grant, Ticket
from relay.limiter.budget import Budget, plan

log = logging.getLogger("relay.limits")

MAX_MISSES = 5
"""Slots a request may miss (or find stale) in a row before its row goes back for later."""
DEFAULT_PAUSE = 1.0
"""Seconds a scope pauses after a 429 that carries no usable Retry-After."""
CHECK_REUSE = 0.005
"""Seconds one pre-send check of a set of buckets serves this process's other sends to them.

Each request is checked just before it goes out (a 429 elsewhere since its slot was granted
stops it); at hundreds of requests a second that check was a Redis round trip per request,
the largest cost after the request itself. Within this window a 429 answered to another
process is seen by the next check, a few requests later at most; one answered to this process
is seen at once (``throttle`` drops the reuse)."""


@dataclass(frozen=True)
class _Checked:
    """One pre-send check's answer (Redis µs), taken at ``at`` (monotonic, before the call)."""

    at: float
    now: int
    paused_until: int
    throttled_at: int


@dataclass
class LimiterStats:
    """What this process's limiter did; the benchmark prints it."""

    granted: int = 0
    refunded: int = 0
    missed: int = 0
    stale: int = 0
    paused: int = 0
    throttles: int = 0
    checks: int = 0
    """Pre-send checks that went to Redis (the others reused one, see ``CHECK_REUSE``)."""
    max_late: float = 0.0
    write_late: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))
    """Seconds from slot to the request's first byte, per request (the newest 100,000)."""


def budgets_for(destinations: Iterable[Destination], jitter: float) -> dict[str, Budget]:
    """The bucket of every scope the destinations consume; a shared scope takes the strictest."""
    budgets: dict[str, Budget] = {}
    for destination in destinations:
        try:
            budget = plan(RateLimit.parse(destination.config.rate_limit), jitter)
        except ValueError as exc:
            raise ConfigError(f"rate limit of destination {destination.name!r}: {exc}") from None
        for scope in destination.limit_scopes():
            current = budgets.get(scope)
            if current is not None and current.limit != budget.limit:
                log.warning(
                    "destinations share rate-limit scope %s with different limits (%s, %s); "
                    "the stricter one applies",
                    scope,
                    current.limit,
                    budget.limit,
                )
            if current is None or budget.interval_us > current.interval_us:
                budgets[scope] = budget
    return budgets


class RedisLimiter:
    """GCRA buckets in Redis; see the module docstring."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        budgets: Mapping[str, Budget],
        *,
        jitter: float = 0.1,
        horizon: float = 1.0,
        pause_cap: float = 300.0,
        recovery_seconds: float = 60.0,
        cut: float = 0.5,
        floor: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        check_reuse: float = CHECK_REUSE,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.budgets = dict(budgets)
        # Lateness past this is thrown away; the rest of the margin is for the network.
        self.late_margin = max(jitter / 2, 0.002)
        self.horizon = horizon
        self.pause_cap = pause_cap
        self.cut = cut
        self.floor = floor
        # The rate climbs back from one cut to full in recovery_seconds.
        self.slope = (1 - cut) / (recovery_seconds * 1_000_000)
        self.clock = clock
        self.sleep = sleep
        self.stats = LimiterStats()
        self.check_reuse = check_reuse
        self._checked: dict[tuple[str, ...], _Checked] = {}
        self._down = False
        self._lock = threading.Lock()
        self._reserve = client.register_script(lua("relay.limiter", "reserve.lua"))
        self._refund = client.register_script(lua("relay.limiter", "refund.lua"))
        self._throttle = client.register_script(lua("relay.limiter", "throttle.lua"))
        self._check = client.register_script(lua("relay.limiter", "check.lua"))

    # -- the Limiter protocol -------------------------------------------------------------

    def reserve(self, scopes: Sequence[str], count: int, horizon: float) -> Grant:
        """Reserve up to ``count`` slots in every scope, none more than ``horizon`` s ahead."""
        return self.reserve_many([(scopes, count)], horizon)[0]

    def reserve_many(
        self, requests: Sequence[tuple[Sequence[str], int]], horizon: float
    ) -> list[Grant]:
        """``reserve`` for each ``(scopes, count)``, in order, in one call to Redis: a round
        of many destinations costs one round trip, not one each."""
        wanted = [(tuple(scopes), count) for scopes, count in requests]
        keys: dict[str, int] = {}
        for scopes, count in wanted:
            if count > 0:
                for scope in scopes:
                    keys.setdefault(scope, len(keys) + 1)
        if not keys:
            return [Grant(()) for _ in wanted]
        served = [(scopes, count) for scopes, count in wanted if count > 0]
        args: list[Any] = [int(horizon * 1_000_000), repr(self.slope), len(served)]
        for budget in self._budgets(list(keys)):
            args += [budget.interval_us, budget.tau_us]
        for scopes, count in served:
            args += [count, len(scopes), *(keys[scope] for scope in scopes)]
        reply = [int(x) for x in self._call(self._reserve, self._keys(list(keys)), args)]
        received = self.clock()
        now, at = reply[0], 1
        grants: dict[int, Grant] = {}
        for index, (scopes, count) in enumerate(wanted):
            if count <= 0:
                continue
            wait, n = reply[at], reply[at + 1]
            slots = reply[at + 2 : at + 2 + n]
            receipt = tuple(reply[at + 2 + n : at + 2 + n + 2 * len(scopes)])
            at += 2 + n + 2 * len(scopes)
            tickets = tuple(Ticket(scopes, received + s / 1e6, now, now + s) for s in slots)
            grants[index] = Grant(tickets, retry_in=wait / 1e6, receipt=receipt)
        with self._lock:
            self.stats.granted += sum(len(grant.tickets) for grant in grants.values())
        return [grants.get(index, Grant(())) for index in range(len(wanted))]

    def refund(self, grant: Grant, unused: int) -> None:
        """Give back the last ``unused`` slots of ``grant`` where nobody reserved since."""
        if unused <= 0 or not grant.tickets:
            return
        unused = min(unused, len(grant.tickets))
        scopes = grant.tickets[0].scopes
        if self._call(self._refund, self._keys(scopes), [unused, *grant.receipt]):
            with self._lock:
                self.stats.refunded += unused

    def wait(self, ticket: Ticket) -> Clearance:
        """Sleep until ``ticket``'s slot; reserve a fresh one if it was missed or went stale."""
        for _ in range(MAX_MISSES):
            delay = ticket.at - self.clock()
            if delay > 0:
                self.sleep(delay)
            late = self.clock() - ticket.at
            with self._lock:
                self.stats.max_late = max(self.stats.max_late, late)
            if late > self.late_margin:
                # Sending now would put this request outside the jitter the budget allows for.
                with self._lock:
                    self.stats.missed += 1
                log.debug("missed a slot of %s by %.3fs; reserving again", ticket.scopes, late)
            else:
                verdict = self._verdict(ticket)
                if verdict > 0:
                    with self._lock:
                        self.stats.paused += 1
                    return Clearance(ticket.at, paused_for=verdict / 1e6)
                if verdict < 0:
                    with self._lock:
                        self.stats.stale += 1
                elif self.clock() - ticket.at <= self.late_margin:
                    return Clearance(ticket.at)
                else:
                    # The check's round trip made the slot late: reserve a fresh one.
                    with self._lock:
                        self.stats.missed += 1
            fresh = self._fresh(ticket.scopes)
            if isinstance(fresh, float):
                return Clearance(ticket.at, paused_for=fresh)
            ticket = fresh
        # This process cannot keep its slots (starved of CPU?): give the row back for later.
        return Clearance(ticket.at, paused_for=1.0)

    def _verdict(self, ticket: Ticket) -> int:
        """May ``ticket``'s request go now? 0 go, > 0 µs its buckets stay paused, < 0 its slot
        is stale (a 429 came after it was granted). Asks Redis unless a check of the same
        buckets was made less than ``check_reuse`` ago."""
        started = self.clock()
        with self._lock:
            checked = self._checked.get(ticket.scopes)
        if checked is None or started - checked.at > self.check_reuse:
            now, paused_until, throttled_at = (
                int(x) for x in self._call(self._check, self._keys(ticket.scopes), [])
            )
            checked = _Checked(started, now, paused_until, throttled_at)
            with self._lock:
                self._checked[ticket.scopes] = checked
                self.stats.checks += 1
        now = checked.now + int((self.clock() - checked.at) * 1e6)
        if checked.paused_until > now:
            return checked.paused_until - now
        return -1 if checked.throttled_at >= ticket.issued else 0

    def throttle(self, scopes: Sequence[str], retry_after: float | None) -> float:
        """Pause ``scopes`` for every worker until Retry-After passes; cut their rate."""
        scopes = tuple(scopes)
        with self._lock:  # this process's own 429: its next check asks Redis
            for checked in [key for key in self._checked if set(key) & set(scopes)]:
                del self._checked[checked]
        pause = DEFAULT_PAUSE if retry_after is None or math.isnan(retry_after) else retry_after
        pause = min(max(pause, 0.0), self.pause_cap)
        args: list[Any] = [int(pause * 1_000_000), repr(self.cut), repr(self.floor)]
        args.append(repr(self.slope))
        args += [budget.tau_us for budget in self._budgets(scopes)]
        left, factor = self._call(self._throttle, self._keys(scopes), args)
        with self._lock:
            self.stats.throttles += 1
        seconds = int(left) / 1e6
        log.warning(
            "rate limit scope %s answered 429: every worker pauses it %.1fs, then sends at "
            "%.0f%% of the budget, recovering gradually",
            ",".join(scopes),
            seconds,
            float(factor) * 100,
        )
        return seconds

    def written(self, late: float) -> None:
        """A request was written ``late`` seconds after its slot."""
        with self._lock:
            self.stats.write_late.append(late)

    def acquire(self, scopes: Sequence[str]) -> None:
        """Block until one request may be sent in every one of ``scopes``."""
        while True:
            fresh = self._fresh(tuple(scopes), patience=math.inf)
            if isinstance(fresh, float):
                self.sleep(fresh)
                continue
            clearance = self.wait(fresh)
            if clearance.go:
                return
            self.sleep(clearance.paused_for)

    # -- helpers ----------------------------------------------------------------------------

    def _fresh(self, scopes: tuple[str, ...], patience: float | None = None) -> Ticket | float:
        """One new slot, waiting up to ``patience`` s for it; else the seconds left to wait."""
        patience = 2 * self.horizon if patience is None else patience
        deadline = self.clock() + patience
        while True:
            grant = self.reserve(scopes, 1, self.horizon)
            if grant.tickets:
                return grant.tickets[0]
            pause = grant.retry_in - self.horizon
            if self.clock() + pause > deadline:
                return max(pause, 0.001)
            self.sleep(max(pause, 0.001))

    def _budgets(self, scopes: Sequence[str]) -> list[Budget]:
        try:
            return [self.budgets[scope] for scope in scopes]
        except KeyError as exc:
            raise ConfigError(
                f"no rate limit is configured for scope {exc.args[0]!r}: build the limiter "
                "from the same destinations the dispatcher sends to"
            ) from None

    def _keys(self, scopes: Sequence[str]) -> list[str]:
        return [self.keys.limiter(scope) for scope in scopes]

    def _call(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        try:
            result = script(keys=keys, args=args)
        except redis.RedisError as exc:
            with self._lock:
                first, self._down = not self._down, True
            if first:
                log.error(
                    "rate limiter unavailable: Redis failed (%s: %s); nothing is sent until it "
                    "is back",
                    type(exc).__name__,
                    exc,
                )
            raise LimiterUnavailable(
                f"the rate limiter's Redis failed ({type(exc).__name__}); nothing was sent"
            ) from exc
        if self._down:
            with self._lock:
                back, self._down = self._down, False
            if back:
                log.warning("rate limiter reachable again: sending resumes")
        return result
