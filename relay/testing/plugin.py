"""The pytest plugin (entry point ``relay`` in ``pytest11``): the ``relay_events`` fixture.

Installing relay makes the fixtures available to every test suite; nothing is captured
unless a test asks for ``relay_events``. To capture in every test, in a ``conftest.py``::

    @pytest.fixture(autouse=True)
    def _relay(relay_events): ...

To give the captured relay settings of your own, override ``relay_settings`` there::

    @pytest.fixture
    def relay_settings():
        return {"servoki_site": "shop.example.com"}   # or a relay.settings.Settings
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relay.settings import Settings
from relay.testing.capture import Capture, capture


@pytest.fixture
def relay_settings() -> Settings | dict[str, Any]:
    """Settings for the captured relay: overrides over the environment, or a whole
    :class:`~relay.settings.Settings`. Override this fixture to pass your own."""
    return {}


@pytest.fixture
def relay_events(relay_settings: Settings | dict[str, Any]) -> Iterator[Capture]:
    """The events this test enqueued, captured in memory and validated as ``enqueue()`` does.

    ``relay.enqueue``, ``enqueue_many``, ``aenqueue`` and any enqueuer from ``relay.configure``
    write here instead of Redis; an invalid event raises ``relay.InvalidEvent`` as in production.
    Each test starts with none.
    """
    if isinstance(relay_settings, Settings):
        with capture(relay_settings) as events:
            yield events
    else:
        with capture(**relay_settings) as events:
            yield events
