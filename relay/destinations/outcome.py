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
    reason: str = ""
    """PAUSE only: why the destination is paused, for `relay status` (default: a refused key)."""

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
        return cls(Verdict.RETRY, status, storable(detail), retry_after, throttled)

    @classmethod
    def dead(cls, status: int | None, detail: str) -> Outcome:
        """A permanent failure: the event will never be accepted as it is."""
        return cls(Verdict.DEAD, status, storable(detail))

    @classmethod
    def pause(cls, status: int, detail: str, reason: str = "") -> Outcome:
        """Stop sending to the destination, mark nothing dead: its key was refused, or its URL
        answers like no API would (``reason`` says which)."""
        return cls(Verdict.PAUSE, status, storable(detail), reason=storable(reason, 500))


def truncate(text: str, limit: int = DETAIL_LIMIT) -> str:
    """Keep at most ``limit`` characters of a response body or error."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# C0 controls but tab, newline and carriage return, and DEL: a NUL cannot be stored in a
# PostgreSQL text column, the rest would garble a terminal that shows the row.
_CONTROLS = {
    code: f"\\x{code:02x}" for code in (*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F)
}


def storable(text: str, limit: int = DETAIL_LIMIT) -> str:
    """``text`` (an API's answer, an error) made fit for every database and terminal.

    Control characters become visible escapes (``\\x00``), text that is not valid Unicode
    (lone surrogates) becomes ``\\udc80``-style escapes, and at most ``limit`` characters
    are kept. An answer the outbox cannot store would otherwise fail the outcome's write.
    """
    text = text[: limit * 2].translate(_CONTROLS)
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return truncate(text, limit)
