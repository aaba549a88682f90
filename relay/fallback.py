"""enqueue()'s fallback when Redis is unreachable: write the events straight into the outbox.

Loaded only when Redis fails, so the normal enqueue path never imports SQLAlchemy. The worker
delivers these rows like any other; they carry the same event ids, so a later Redis copy of the
same event is deduplicated by the outbox's unique key.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from relay.db import make_engine, safe_url
from relay.errors import RelayUnavailable
from relay.migrate import is_current, upgrade
from relay.outbox import Outbox
from relay.queue import parse_items
from relay.settings import Settings

log = logging.getLogger("relay.enqueue")
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def dispose_engines() -> None:
    """Close the fallback's pooled connections (on Enqueuer.close)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()


def write_to_outbox(settings: Settings, items: list[bytes]) -> None:
    """Insert queue items into the outbox; raise RelayUnavailable naming the database's failure."""
    url = settings.resolved_database_url
    with _lock:
        engine = _engines.get(url)
        if engine is None:
            engine = _engines[url] = make_engine(url, connect_timeout=settings.enqueue_timeout * 10)
    known = frozenset(settings.destination_configs())
    events = parse_items(items, known, settings.max_event_bytes).events
    try:
        if not is_current(engine) and engine.dialect.name == "sqlite":
            upgrade(engine)  # the embedded outbox may not exist yet: the worker would do this
        if not is_current(engine):
            raise RelayUnavailable(
                f"the outbox at {safe_url(url)} has no current schema: run `relay db upgrade`"
            )
        Outbox(engine).insert(events)
    except SQLAlchemyError as exc:
        raise RelayUnavailable(
            f"the outbox database at {safe_url(url)} failed too: {type(exc).__name__}"
        ) from exc
    log.warning(
        "Redis unavailable: wrote %d event(s) straight into the outbox at %s",
        len(events),
        safe_url(url),
    )
