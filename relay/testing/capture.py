"""Capture events in memory: the real checks and stamps, no Redis, no database, no keys.

Every write path of the relay ends in one of the :class:`~relay.enqueue.Enqueuer`'s write
methods (``push``, ``apush``, ``write_in``), after ``encode`` has validated and stamped the
event. A capture replaces those methods, for every enqueuer, with :meth:`Capture.record`, so
``relay.enqueue``, ``relay.enqueue_many``, ``relay.aenqueue``, ``relay.enqueue_in``, an enqueuer
built by ``relay.configure`` and the framework helpers in ``relay.contrib`` all validate exactly
as in production and write nothing.

A new write path joins by being one more ``Enqueuer`` method after ``encode``, replaced in
``_writes_recorded_by`` by a call to :meth:`Capture.record`. The transactional ``enqueue`` (the
caller's SQLAlchemy Session or Connection, or Django's atomic block) records on its
transaction's commit and drops the events on rollback, as the outbox row would be: its
replacement hands ``record`` to the enqueuer's own after-commit hook, so this package never
imports SQLAlchemy.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from pydantic import ValidationError

from relay.destinations import KINDS, Destination
from relay.enqueue import Enqueuer, Transaction
from relay.queue import wire
from relay.settings import Settings, load_settings
from relay.testing.events import CapturedEvent, Events

# The module itself (the attribute relay.enqueue is the function of that name), for its process
# enqueuer (_default) and the load_settings that configure() calls.
enqueue_module: Any = importlib.import_module(Enqueuer.__module__)

TEST_URL = "https://{kind}.invalid"
"""A destination URL for tests: the ``.invalid`` domain never resolves (RFC 2606)."""
TEST_OPTIONS: dict[str, dict[str, str]] = {
    # Servoki refuses an event without a site unless RELAY_SERVOKI_SITE names one; with it, an
    # event written as in the README validates in a test environment that sets nothing.
    "servoki": {"site": "example.com"},
}


def example_key(cls: type[Destination]) -> str | None:
    """A key of ``cls``'s documented shape (``servoki_relaytest``), or None if none is made so."""
    key = re.sub(r"<[^>]*>", "relaytest", cls.key_shape)
    return key if cls.key_is_well_formed(key) else None


def capture_settings(**overrides: Any) -> Settings:
    """The settings of a capture: the environment's (``RELAY_*``, ``.env``, ``RELAY_CONFIG``) and
    ``overrides``, plus a test key, URL and options for every kind that has no key there.

    A test environment may set nothing, yet both built-in destinations validate; a kind whose
    key the environment or ``overrides`` give keeps its own settings, as in production.
    """
    try:
        found = Settings(**overrides)
    except ValidationError:
        return load_settings(**overrides)  # raises the ConfigError that names the setting
    defaults: dict[str, Any] = {}
    for kind, cls in KINDS.items():
        field = f"{kind}_api_key"
        key = example_key(cls)
        if field not in type(found).model_fields or getattr(found, field) is not None or not key:
            continue
        defaults[field] = key
        if not getattr(found, f"{kind}_url"):
            defaults[f"{kind}_url"] = TEST_URL.format(kind=kind)
        for option, value in TEST_OPTIONS.get(kind, {}).items():
            if getattr(found, f"{kind}_{option}", None) is None:
                defaults[f"{kind}_{option}"] = value
    return load_settings(**{**defaults, **overrides})


class Capture(Events):
    """The events enqueued since the capture began (or since :meth:`clear`), live."""

    def __init__(self) -> None:
        super().__init__(what="events")
        self._log: list[CapturedEvent] = []
        self._lock = threading.Lock()

    def _events(self) -> Sequence[CapturedEvent]:
        with self._lock:
            return tuple(self._log)

    def clear(self) -> None:
        """Forget what was captured so far."""
        with self._lock:
            self._log.clear()

    def record(self, enqueuer: Enqueuer, items: Sequence[bytes]) -> list[CapturedEvent]:
        """Keep ``items``, queue items that ``enqueuer.encode`` made: the one recording point.

        Every write path calls this in place of its write (the transactional ``enqueue`` too),
        so what a test reads back is what the worker would have drained.
        """
        known = frozenset(enqueuer.destinations)
        batch = wire.parse_items(list(items), known, enqueuer.max_bytes)
        if batch.poison:
            item, reason = batch.poison[0]
            raise AssertionError(f"relay.testing: the worker would set {item!r} aside: {reason}")
        events = [_captured(enqueuer.destinations[new.destination], new) for new in batch.events]
        with self._lock:
            self._log.extend(events)
        return events


def _captured(dest: Destination, new: wire.NewEvent) -> CapturedEvent:
    type_field = dest.type_field
    kind_type = new.payload.get(type_field) if type_field is not None else None
    return CapturedEvent(
        destination=new.destination,
        kind=dest.kind,
        event_id=new.event_id,
        type=kind_type if isinstance(kind_type, str) else None,
        payload=new.payload,
        enqueued_at=new.enqueued_at,
        item=new.raw,
    )


@contextmanager
def capture(settings: Settings | None = None, **overrides: Any) -> Iterator[Capture]:
    """Capture every event enqueued in this process until the block ends.

        with relay.testing.capture() as events:
            checkout(order)
        assert events.of("servoki", "purchase").one().event_id == f"order_{order.id}"

    ``settings`` is used as given; without it, :func:`capture_settings` with ``overrides``. A
    ``relay.configure(...)`` inside the block gets the same test defaults under its own
    overrides. On exit the process's enqueuer is the one from before the block.
    """
    if settings is not None and overrides:
        raise TypeError("capture() takes settings or overrides, not both")
    events = Capture()
    used = settings if settings is not None else capture_settings(**overrides)
    with _writes_recorded_by(events, overrides):
        previous = enqueue_module._default
        enqueue_module._default = Enqueuer(used)
        try:
            yield events
        finally:
            current, enqueue_module._default = enqueue_module._default, previous
            if current is not None and current is not previous:
                current.close()


@contextmanager
def _writes_recorded_by(events: Capture, overrides: dict[str, Any]) -> Iterator[None]:
    """Every enqueuer's writes go to ``events``; ``configure()`` reads the test settings."""

    def push(enqueuer: Enqueuer, items: list[bytes]) -> None:
        events.record(enqueuer, items)

    async def apush(enqueuer: Enqueuer, items: list[bytes]) -> None:
        events.record(enqueuer, items)

    def write_in(enqueuer: Enqueuer, transaction: Transaction, items: list[bytes]) -> None:
        # No row and no schema check: recorded when the caller's transaction commits.
        transaction.on_commit(partial(events.record, enqueuer, items))

    def settings_for_configure(**more: Any) -> Settings:
        return capture_settings(**{**overrides, **more})

    replaced: dict[tuple[object, str], object] = {
        (Enqueuer, "push"): push,
        (Enqueuer, "apush"): apush,
        (Enqueuer, "write_in"): write_in,
        (enqueue_module, "load_settings"): settings_for_configure,
    }
    saved = {(owner, name): getattr(owner, name) for owner, name in replaced}
    for (owner, name), value in replaced.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
