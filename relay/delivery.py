"""The delivery engine: claim due outbox rows, POST each, record what the response meant.

No database transaction is open while a request is in flight: claiming commits a lease, the
POST happens, and the outcome is written with an update guarded by the lease token.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from relay import failpoints
from relay.destinations import Destination
from relay.limiter import Limiter
from relay.outbox import Claim, Outbox, utcnow
from relay.outcomes import Outcome, Verdict, truncate
from relay.pauses import Pauses
from relay.retry import RetryPolicy

log = logging.getLogger("relay.delivery")


@dataclass
class DispatchReport:
    """What one dispatch round did."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    paused: set[str] = field(default_factory=set)
    lost_leases: int = 0

    def add(self, other: DispatchReport) -> None:
        self.claimed += other.claimed
        self.delivered += other.delivered
        self.retried += other.retried
        self.dead += other.dead
        self.paused |= other.paused
        self.lost_leases += other.lost_leases


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The request body: the same bytes on every attempt of an event."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def make_http_client(connect_timeout: float, read_timeout: float, pool: int = 16) -> httpx.Client:
    """The HTTP client deliveries share; TLS verification stays on."""
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        limits=httpx.Limits(max_connections=pool, max_keepalive_connections=pool),
        follow_redirects=False,
    )


class Dispatcher:
    """Delivers due outbox rows to their destinations."""

    def __init__(
        self,
        outbox: Outbox,
        destinations: Mapping[str, Destination],
        http: httpx.Client,
        pauses: Pauses,
        limiter: Limiter,
        policy: RetryPolicy,
        *,
        lease_seconds: float = 60.0,
        concurrency: int = 4,
    ) -> None:
        self.outbox = outbox
        self.destinations = destinations
        self.http = http
        self.pauses = pauses
        self.limiter = limiter
        self.policy = policy
        self.lease_seconds = lease_seconds
        self.concurrency = concurrency
        self._pool = ThreadPoolExecutor(concurrency) if concurrency > 1 else None

    def active_destinations(self) -> tuple[list[str], list[str]]:
        """(destinations to send to normally, paused ones that may get one probe now)."""
        paused = self.pauses.all()
        active = [name for name in self.destinations if name not in paused]
        probes = [
            name
            for name, record in paused.items()
            if name in self.destinations and self.pauses.take_probe(name, record)
        ]
        return active, probes

    def dispatch_due(self, limit: int) -> DispatchReport:
        """Claim and deliver up to ``limit`` due rows; return what happened."""
        report = DispatchReport()
        active, probes = self.active_destinations()
        work = [
            (claim, True)
            for name in probes
            for claim in self.outbox.claim_due(1, self.lease_seconds, [name])
        ]
        work += [
            (claim, False) for claim in self.outbox.claim_due(limit, self.lease_seconds, active)
        ]
        report.claimed = len(work)
        if self._pool is None or len(work) <= 1:
            results = [self.deliver(claim, probe) for claim, probe in work]
        else:
            results = list(self._pool.map(lambda item: self.deliver(*item), work))
        for (claim, _), (outcome, recorded) in zip(work, results, strict=True):
            if not recorded:
                report.lost_leases += 1
            elif outcome.verdict is Verdict.DELIVERED:
                report.delivered += 1
            elif outcome.verdict is Verdict.DEAD:
                report.dead += 1
            elif outcome.verdict is Verdict.PAUSE:
                report.paused.add(claim.destination)
            else:
                report.retried += 1
        return report

    def deliver(self, claim: Claim, probe: bool = False) -> tuple[Outcome, bool]:
        """Send one claimed event and record the outcome; (outcome, whether it was recorded).

        ``probe`` marks the single event sent to a paused destination to test its key.
        """
        destination = self.destinations[claim.destination]
        self.limiter.acquire(destination.limit_scopes())
        outcome = self.settle(claim, self.send(destination, claim))
        failpoints.hit("dispatch.after_send")
        return outcome, self.record(claim, outcome, probe=probe)

    def send(self, destination: Destination, claim: Claim) -> Outcome:
        """POST the event; translate transport errors into retry outcomes."""
        request = destination.build_request(encode_body(claim.payload))
        try:
            response = self.http.request(
                request.method, request.url, headers=request.headers, content=request.body
            )
        except httpx.TimeoutException as exc:
            return Outcome.retry(None, f"timeout: {type(exc).__name__}")
        except httpx.TransportError as exc:
            return Outcome.retry(None, f"connection error: {type(exc).__name__}: {exc}")
        return destination.classify(response.status_code, response.headers, response.text)

    def record(self, claim: Claim, outcome: Outcome, *, probe: bool = False) -> bool:
        """Write ``outcome`` for ``claim`` if its lease still holds; log one line."""
        where = f"event_id={claim.event_id} destination={claim.destination}"
        status = outcome.status
        if outcome.verdict is Verdict.DELIVERED:
            assert status is not None
            recorded = self.outbox.mark_delivered(claim, status)
            if probe:
                self.pauses.resume(claim.destination)
            log.info("delivered %s status=%s attempt=%d", where, status, claim.attempts)
        elif outcome.verdict is Verdict.DEAD:
            recorded = self.outbox.mark_dead(claim, status, outcome.detail)
            log.error("dead %s status=%s: %s", where, status, truncate(outcome.detail, 200))
        elif outcome.verdict is Verdict.PAUSE:
            self.pauses.pause(
                claim.destination, f"HTTP {status}: the API refused the key", status, probe=probe
            )
            recorded = self.outbox.release(claim, self.pauses.probe_seconds)
            log.error("paused %s status=%s: key refused; rotate it, then resume", where, status)
        else:
            recorded = self._retry(claim, outcome, where)
        if not recorded:
            log.warning("lease lost for %s: a newer claim owns the row; result dropped", where)
        return recorded

    def _retry(self, claim: Claim, outcome: Outcome, where: str) -> bool:
        delay = self.policy.delay(self._attempts_used(claim, outcome), outcome.retry_after)
        log.warning(
            "retry %s status=%s in %.1fs: %s",
            where,
            outcome.status,
            delay,
            truncate(outcome.detail, 200),
        )
        return self.outbox.schedule_retry(
            claim, outcome.status, outcome.detail, delay, refund_attempt=outcome.throttled
        )

    def settle(self, claim: Claim, outcome: Outcome) -> Outcome:
        """A retry the policy no longer allows becomes dead, with the reason and last error."""
        if outcome.verdict is not Verdict.RETRY:
            return outcome
        reason = self.policy.exhausted(
            self._attempts_used(claim, outcome), claim.enqueued_at, utcnow()
        )
        if reason is None:
            return outcome
        return Outcome.dead(outcome.status, f"{reason}; last: {outcome.detail}")

    @staticmethod
    def _attempts_used(claim: Claim, outcome: Outcome) -> int:
        # A 429 means the budget was wrong, not the event: it does not use up an attempt.
        return claim.attempts - 1 if outcome.throttled else claim.attempts

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
