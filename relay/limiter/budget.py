"""From a documented limit to bucket parameters that can never exceed it.

A bucket of capacity ``C`` refilled at ``r`` per second (GCRA with interval ``T = 1/r`` and
burst tolerance ``tau = (C - 1)·T``) grants at most ``C + r·Δ`` slots in any closed interval
of length ``Δ``. The API counts *arrivals*, and an arrival lands between 0 and ``J`` (the
jitter margin) after its slot, so the arrivals in one window ``W`` come from slots in an
interval of ``W + J``::

    arrivals in any window  <=  C + r·(W + J)  <=  L - SLACK

which gives ``r = (L - C - SLACK) / (W + J)``. ``C`` is small (enough to bridge ~50 ms of gaps
between rounds, at most 5 % of ``L``): every request of burst is one less request of rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from relay.destinations.rates import RateLimit

__all__ = ["BURST_SECONDS", "SLACK", "Budget", "RateLimit", "plan"]

SLACK = 1
"""One request of margin for rounding (slots are whole microseconds, windows are closed)."""
BURST_SECONDS = 0.05
"""The capacity covers this much time at full rate: the gap between two dispatch rounds."""


@dataclass(frozen=True)
class Budget:
    """Bucket parameters for one limit, with the ceiling they guarantee."""

    limit: RateLimit
    jitter: float
    capacity: int
    rate: float
    """Sustained slots per second."""

    @property
    def interval_us(self) -> int:
        """GCRA emission interval, rounded up to whole microseconds (never faster than ``rate``)."""
        return math.ceil(1_000_000 / self.rate)

    @property
    def tau_us(self) -> int:
        """GCRA burst tolerance: ``capacity - 1`` intervals."""
        return (self.capacity - 1) * self.interval_us

    @property
    def per_window(self) -> float:
        """Sustained requests per documented window."""
        return 1_000_000 / self.interval_us * self.limit.window

    @property
    def utilisation(self) -> float:
        """Sustained rate as a fraction of the documented limit (the ceiling the relay aims at)."""
        return self.per_window / self.limit.limit

    @property
    def worst_window(self) -> float:
        """Most arrivals any window can see, jitter up to ``jitter`` included (<= L - SLACK)."""
        return self.capacity + self.per_window / self.limit.window * (
            self.limit.window + self.jitter
        )

    def __str__(self) -> str:
        return (
            f"{self.limit}: capacity {self.capacity}, {self.rate:.3f}/s "
            f"= {self.per_window:.1f} per {self.limit.window:g}s ({self.utilisation:.1%})"
        )


def plan(limit: RateLimit, jitter: float) -> Budget:
    """The bucket for ``limit`` when arrivals may jitter up to ``jitter`` s after their slot."""
    if jitter < 0:
        raise ValueError(f"the jitter margin must be >= 0 s, got {jitter}")
    limit.check_paceable()
    span = limit.window + jitter
    capacity = 1 + math.ceil((limit.limit - 1 - SLACK) / span * BURST_SECONDS)
    # Under 40 requests the capacity is 1, so L - 1 - SLACK > 0 from PACEABLE_MINIMUM (3) on;
    # from 40 on it is at most L/20, which always leaves a positive rate.
    capacity = max(1, min(capacity, limit.limit // 20))
    rate = (limit.limit - capacity - SLACK) / span
    return Budget(limit, jitter, capacity, rate)
