"""FastAPI and Starlette: a lifespan that opens and closes the relay, and a handler dependency.

    from typing import Annotated
    from fastapi import Depends, FastAPI
    from relay.contrib.fastapi import Events, events, lifespan

    app = FastAPI(lifespan=lifespan)

    @app.post("/checkout")
    async def checkout(relay_events: Annotated[Events, Depends(events)]):
        ...
        await relay_events.enqueue("servoki", {"event_type": "purchase"})

``lifespan`` checks the settings at start (``RELAY_*`` variables, or ``relay_lifespan(...)``
with overrides), makes the process's enqueuer, and at shutdown closes the async Redis pool of
the app's event loop. Under uvicorn ``--workers N`` each worker process runs its own lifespan:
nothing is shared across processes. An app with a lifespan of its own enters
``relay_session()`` inside it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from relay.enqueue import Enqueuer, configure, default_enqueuer


class Events:
    """What a handler gets: enqueue through the app's enqueuer without blocking the loop."""

    def __init__(self, enqueuer: Enqueuer) -> None:
        self.enqueuer = enqueuer

    async def enqueue(
        self, destination: str, payload: Mapping[str, Any], *, event_id: str | None = None
    ) -> str:
        """:func:`relay.aenqueue`: same checks, one write; returns the event id."""
        event_id, item = self.enqueuer.encode(destination, payload, event_id)
        await self.enqueuer.apush([item])
        return event_id

    async def enqueue_many(
        self, destination: str, payloads: Iterable[Mapping[str, Any]]
    ) -> list[str]:
        """Many events in one write, all or nothing."""
        ids, items = self.enqueuer.encode_many(destination, payloads)
        await self.enqueuer.apush(items)
        return ids


@asynccontextmanager
async def relay_session(**overrides: Any) -> AsyncIterator[Events]:
    """Build the process's enqueuer (settings checked now); close its async pool on exit."""
    enqueuer = configure(**overrides)
    try:
        yield Events(enqueuer)
    finally:
        await enqueuer.aclose()


def relay_lifespan(**overrides: Any) -> Callable[[Any], AbstractAsyncContextManager[None]]:
    """A lifespan for ``FastAPI(lifespan=...)`` with settings ``overrides`` over the environment."""

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with relay_session(**overrides):
            yield

    return run


lifespan = relay_lifespan()
"""The lifespan with the settings of the environment (``RELAY_*``, ``RELAY_CONFIG``)."""


async def events() -> Events:
    """The handler dependency: ``Annotated[Events, Depends(events)]``."""
    return Events(default_enqueuer())
