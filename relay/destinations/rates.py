"""A documented rate limit as a value: ``"600/60s"`` is at most 600 requests in any 60 s.

Destinations declare their default limit in this form, settings parse the configured ones,
the limiter turns them into buckets (:mod:`relay.limiter.budget`) and the sandbox enforces
them; all of them read the text here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)\s*s?\s*$")

PACEABLE_MINIMUM = 3
"""The fewest requests per window the limiter can pace: one slot of burst, one request of
margin for rounding, and one to spend (see :func:`relay.limiter.budget.plan`)."""


@dataclass(frozen=True)
class RateLimit:
    """A documented limit: at most ``limit`` requests in any sliding window of ``window`` s."""

    limit: int
    window: float

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``"600/60s"``, ``"500/10s"`` or ``"50/0.5s"``; raise ValueError otherwise."""
        match = _LIMIT.match(text)
        if match is None:
            raise ValueError(f'a rate limit looks like "600/60s" (requests/window), got {text!r}')
        limit, window = int(match.group(1)), float(match.group(2))
        if limit < 1 or window <= 0:
            raise ValueError(f"a rate limit needs >= 1 request and a window > 0, got {text!r}")
        return cls(limit, window)

    def check_paceable(self) -> RateLimit:
        """This limit, if the limiter can pace under it; raise ValueError otherwise."""
        if self.limit < PACEABLE_MINIMUM:
            raise ValueError(
                f"rate limit {self} is too small to pace safely: it needs at least "
                f"{PACEABLE_MINIMUM} requests per window"
            )
        return self

    def __str__(self) -> str:
        return f"{self.limit}/{self.window:g}s"
