"""Rate limiting: the seam where a shared, Redis-timed token bucket plugs in.

``Limiter.acquire(scopes)`` blocks until one request may be sent in every scope. The delivery
engine calls it before each POST; destinations declare the scopes a request consumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Limiter(Protocol):
    def acquire(self, scopes: Sequence[str]) -> None:
        """Block until one request may be sent in every one of ``scopes``."""


class Unlimited:
    """Sends at once: for tests and sandboxes with limits off."""

    def acquire(self, scopes: Sequence[str]) -> None:
        return None
