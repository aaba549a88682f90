"""When to try again: exponential backoff with full jitter, Retry-After as a floor."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff ``base * 2**(attempt-1)`` capped at ``cap``, drawn uniformly from [0, that]."""

    base: float = 2.0
    cap: float = 1800.0
    max_attempts: int = 25
    max_age: float = 72 * 3600.0
    retry_after_cap: float = 3600.0
    attempts_setting: str = "RELAY_MAX_ATTEMPTS"
    age_setting: str = "RELAY_MAX_AGE_SECONDS"
    """Where the limits were set, named in the reason a row went dead."""

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds to wait before the next attempt, after ``attempts`` failed ones."""
        ceiling = min(self.cap, self.base * 2 ** max(0, attempts - 1))
        wait = random.uniform(0, ceiling)
        if retry_after is not None:
            # The API said when; a bogus huge value must not park an event for days.
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait

    def exhausted(self, attempts: int, since: datetime, now: datetime) -> str | None:
        """Why no further attempt is allowed (the reason to record), or None.

        ``since`` is where the age counts from: the enqueue, or an operator's last retry.
        """
        if attempts >= self.max_attempts:
            return (
                f"gave up after {attempts} attempts ({self.attempts_setting}={self.max_attempts})"
            )
        age = (now - since).total_seconds()
        if age >= self.max_age:
            return f"gave up after {age:.0f}s ({self.age_setting}={self.max_age:.0f})"
        return None
