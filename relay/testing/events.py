"""What a test reads back: the captured events, filtered, with failures that show them all.

    assert relay_events.of("servoki", "purchase").one().payload["value"] == 49.9
    assert relay_events.ids == ["order_42"]

Filters return snapshots (:class:`Events`); every failure lists what was captured, so a test
that looked for the wrong destination, type or id says at once what was enqueued instead.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, overload

_SHOWN_BYTES = 160
"""How much of a payload a listing shows per event."""


@dataclass(frozen=True)
class CapturedEvent:
    """One event as the worker would have drained it: validated, stamped, ready to send."""

    destination: str
    """The destination's name, as given to ``enqueue()`` (``"servoki"``, ``"datalook-eu"``)."""
    kind: str
    """The destination's kind (``"servoki"``, ``"datalook"``)."""
    event_id: str
    """The id ``enqueue()`` returned: the caller's, or the one it stamped."""
    type: str | None
    """The value of the kind's type field (Servoki ``event_type``, DataLook ``event_name``)."""
    payload: dict[str, Any]
    """The body the API would get: stamped (Servoki ``event_id``, ``occurred_at``), PII dropped."""
    enqueued_at: datetime
    """When it was enqueued (UTC), as the queue item records it."""
    item: bytes = field(default=b"", repr=False, compare=False)
    """The queue item ``enqueue()`` would have written to Redis."""

    def __str__(self) -> str:
        body = json.dumps(self.payload, ensure_ascii=False, default=str)
        if len(body) > _SHOWN_BYTES:
            body = body[: _SHOWN_BYTES - 1] + "…"
        kind = "" if self.kind == self.destination else f" ({self.kind})"
        return f"{self.destination}{kind} {self.type or '-'} id={self.event_id} {body}"


class Events(Sequence[CapturedEvent]):
    """Captured events in the order they were enqueued; every filter returns a new ``Events``."""

    def __init__(
        self,
        events: Iterable[CapturedEvent] = (),
        what: str = "events",
        everything: Sequence[CapturedEvent] | None = None,
    ) -> None:
        self._snapshot = tuple(events)
        self._what = what
        self._everything = everything

    def _events(self) -> Sequence[CapturedEvent]:
        return self._snapshot

    def _captured(self) -> Sequence[CapturedEvent]:
        """Everything the capture holds, for failure messages."""
        return self._events() if self._everything is None else self._everything

    def _narrowed(self, keep: Iterable[CapturedEvent], what: str) -> Events:
        return Events(keep, what, self._captured())

    # -- filters ----------------------------------------------------------------------

    def of(self, destination: str, event_type: str | None = None) -> Events:
        """The events for ``destination`` (its name), of ``event_type`` when given."""
        found = self._narrowed(
            (e for e in self._events() if e.destination == destination),
            f"{destination} {self._what}",
        )
        return found if event_type is None else found.of_type(event_type)

    def of_type(self, event_type: str) -> Events:
        """The events whose type field (Servoki ``event_type``, DataLook ``event_name``) is
        ``event_type``."""
        return self._narrowed(
            (e for e in self._events() if e.type == event_type),
            f"{self._what} of type {event_type!r}",
        )

    def where(self, **fields: Any) -> Events:
        """The events whose payload has every one of ``fields`` with that value."""
        shown = ", ".join(f"{name}={value!r}" for name, value in fields.items())
        return self._narrowed(
            (e for e in self._events() if all(_has(e.payload, n, v) for n, v in fields.items())),
            f"{self._what} where {shown}",
        )

    # -- reading ----------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """The event ids, in the order they were enqueued."""
        return [event.event_id for event in self._events()]

    @property
    def payloads(self) -> list[dict[str, Any]]:
        """The payloads as the APIs would get them, in the order they were enqueued."""
        return [event.payload for event in self._events()]

    def by_id(self, event_id: str) -> CapturedEvent:
        """The event with ``event_id``; a failure that lists what was captured if none."""
        __tracebackhide__ = True  # pytest shows the user's line, not this one
        for event in self._events():
            if event.event_id == event_id:
                return event
        raise AssertionError(f"no {self._what} with id {event_id!r}; {self._listing()}")

    def one(self) -> CapturedEvent:
        """The only event here; a failure that lists what was captured if there are 0 or 2+."""
        __tracebackhide__ = True
        events = self._events()
        if len(events) != 1:
            raise AssertionError(
                f"expected exactly one of the {self._what}, found {len(events)}; {self._listing()}"
            )
        return events[0]

    def _listing(self) -> str:
        captured = self._captured()
        if not captured:
            return "nothing was enqueued"
        lines = "".join(f"\n  {event}" for event in captured)
        return f"captured {len(captured)} event{'s' if len(captured) != 1 else ''}:{lines}"

    # -- the sequence -----------------------------------------------------------------

    @overload
    def __getitem__(self, index: int) -> CapturedEvent: ...

    @overload
    def __getitem__(self, index: slice) -> Events: ...

    def __getitem__(self, index: int | slice) -> CapturedEvent | Events:
        if isinstance(index, slice):
            return self._narrowed(self._events()[index], self._what)
        return self._events()[index]

    def __len__(self) -> int:
        return len(self._events())

    def __iter__(self) -> Iterator[CapturedEvent]:
        return iter(self._events())

    def __repr__(self) -> str:
        events = self._events()
        if not events:
            return f"<no {self._what}>"
        lines = "".join(f"\n  {event}" for event in events)
        return f"<{self._what} ({len(events)}):{lines}>"


def _has(payload: dict[str, Any], name: str, value: Any) -> bool:
    return name in payload and payload[name] == value
