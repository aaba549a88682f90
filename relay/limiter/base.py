"""Rate limiting: the seam between the delivery engine and the shared token buckets.

The delivery engine claims rows, then asks for a send slot for each and gives back the rows no
slot came for, so it never holds a row it cannot send soon (and a slow claim cannot make the
slots late); each request waits for its own slot::

    claims = outbox.claim_due(want, ...)                    # the rows this round wants to send
    grant = limiter.reserve(scopes, len(claims), 0.15)      # slots in the next 0.15 s
    outbox.release(claims[len(grant.tickets):])             # rows no slot came for go back
    clearance = limiter.wait(ticket)                        # sleep until the slot, then check
    if clearance.go: POST … ; on 429: limiter.throttle(scopes, retry_after)

``RedisLimiter`` (:mod:`relay.limiter.bucket`) keeps the buckets in Redis, timed by Redis's
clock and shared by every worker on every host. A destination declares the scopes a request
consumes (``Destination.limit_scopes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Ticket:
    """One reserved send slot in every scope of ``scopes``."""

    scopes: tuple[str, ...]
    at: float
    """When to send, on this process's ``time.monotonic()`` clock."""
    issued: int = 0
    """Redis time of the reservation (µs): a 429 after it makes the slot stale."""
    due: int = 0
    """The slot on Redis's clock (µs): what the bucket's guarantee is about."""


@dataclass(frozen=True)
class Grant:
    """The slots one ``reserve`` call got, earliest first (possibly none)."""

    tickets: tuple[Ticket, ...]
    retry_in: float = 0.0
    """With no tickets: seconds until a reservation could get one."""
    receipt: tuple[int, ...] = field(default=(), repr=False)
    """What ``refund`` needs to give the last slots back."""


@dataclass(frozen=True)
class Clearance:
    """What ``Limiter.wait`` decided for one request."""

    slot: float
    """The slot the request goes out on (monotonic), possibly a fresh one."""
    paused_for: float = 0.0
    """> 0: a 429 paused the scope; do not send, try again after this many seconds."""

    @property
    def go(self) -> bool:
        return self.paused_for <= 0


class SlotMissed(Exception):
    """A request was about to be written later than its slot allows: it was called off with
    nothing sent, and waits for a fresh slot."""


class Limiter(Protocol):
    """Shared send budgets, one per scope."""

    late_margin: float
    """Seconds a request may be written after its slot: the budget allows for this much."""

    def reserve(self, scopes: Sequence[str], count: int, horizon: float) -> Grant:
        """Reserve up to ``count`` slots in every scope, none more than ``horizon`` s ahead."""

    def reserve_many(
        self, requests: Sequence[tuple[Sequence[str], int]], horizon: float
    ) -> list[Grant]:
        """``reserve(scopes, count, horizon)`` for each request, in order, all at once."""

    def refund(self, grant: Grant, unused: int) -> None:
        """Give back the last ``unused`` slots of ``grant`` (when nobody reserved after it)."""

    def wait(self, ticket: Ticket) -> Clearance:
        """Block until ``ticket``'s slot; say whether the request may go."""

    def throttle(self, scopes: Sequence[str], retry_after: float | None) -> float:
        """The API answered 429: pause ``scopes`` for every worker; return the pause (s)."""

    def acquire(self, scopes: Sequence[str]) -> None:
        """Block until one request may be sent in every one of ``scopes``."""

    def written(self, late: float) -> None:
        """A request was written ``late`` seconds after its slot (for the statistics)."""
