"""What one delivery attempt meant, decided by the destination module."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

DETAIL_LIMIT = 2000


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"
    PAUSE = "pause"


@dataclass(frozen=True)
class Outcome:
    """The verdict on one attempt, with what to keep of the response."""

    verdict: Verdict
    status: int | None
    detail: str = ""
    retry_after: float | None = None
    throttled: bool = False

    @classmethod
    def delivered(cls, status: int) -> Outcome:
        return cls(Verdict.DELIVERED, status)

    @classmethod
    def retry(
        cls,
        status: int | None,
        detail: str,
        *,
        retry_after: float | None = None,
        throttled: bool = False,
    ) -> Outcome:
        """Try again later; ``retry_after`` (seconds) is a floor for the wait."""
        return cls(Verdict.RETRY, status, truncate(detail), retry_after, throttled)

    @classmethod
    def dead(cls, status: int | None, detail: str) -> Outcome:
        """A permanent failure: the event will never be accepted as it is."""
        return cls(Verdict.DEAD, status, truncate(detail))

    @classmethod
    def pause(cls, status: int, detail: str) -> Outcome:
        """The destination's key was refused: stop sending to it, mark nothing dead."""
        return cls(Verdict.PAUSE, status, truncate(detail))


def truncate(text: str, limit: int = DETAIL_LIMIT) -> str:
    """Keep at most ``limit`` characters of a response body or error."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
