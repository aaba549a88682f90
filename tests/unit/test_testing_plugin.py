"""relay.testing, as a user's test suite meets it: the relay_events fixture and capture().

The fixture's tests run a small user test suite with pytest's ``pytester`` (in this process:
no server, no child process). Its conftest makes every socket connect fail the test, and its
settings point Redis and the outbox database at a closed port: the suite passing proves that
capturing reaches neither. It has no RELAY_* variable and no .env, as a CI job may have none.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

import relay
from relay.enqueue import Enqueuer
from relay.testing import capture, capture_settings

pytest_plugins = ["pytester"]

enqueue_module = importlib.import_module("relay.enqueue")

PURCHASE = {"event_type": "purchase", "value": 49.9, "currency": "EUR"}
EURO = "servoki.currency must be a 3-letter ISO 4217 code such as \"EUR\", got 'euro'"


@pytest.fixture(autouse=True)
def _no_relay_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in [name for name in os.environ if name.startswith("RELAY_")]:
        monkeypatch.delenv(name)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released; no connection is made)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


USER_CONFTEST = """
import socket

import pytest

PORT = {port}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(sock, address, *args):
        sock.close()
        raise AssertionError(f"a test connected to {{address!r}}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def relay_settings():
    # Were anything sent, it would go here: nothing listens on PORT.
    return {{
        "redis_url": f"redis://127.0.0.1:{{PORT}}/0",
        "database_url": f"postgresql://relay@127.0.0.1:{{PORT}}/shop",
    }}
"""

USER_TESTS = """
import asyncio
import re
import socket

import pytest

import relay

from conftest import PORT

PURCHASE = {"event_type": "purchase", "value": 49.9, "currency": "EUR"}
BAD = {"event_type": "purchase", "currency": "euro"}
EURO = 'servoki.currency must be a 3-letter ISO 4217 code such as "EUR", got \\'euro\\''


def test_the_network_guard_works():
    with socket.socket() as sock, pytest.raises(AssertionError, match="connected to"):
        sock.connect(("127.0.0.1", PORT))


def test_enqueue_is_captured_and_stamped(relay_events):
    assert relay.enqueue("servoki", PURCHASE, event_id="order_42") == "order_42"
    event = relay_events.of("servoki", "purchase").one()
    assert event.event_id == "order_42" == event.payload["event_id"]
    assert re.fullmatch(r"\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\dZ", event.payload["occurred_at"])
    assert event.payload["site"] == "example.com"  # the test default
    assert relay_events.ids == ["order_42"]
    assert relay_events.where(currency="EUR").ids == ["order_42"]


def test_a_second_test_sees_none_of_the_first(relay_events):
    assert len(relay_events) == 0
    assert relay_events.ids == []


def test_clear(relay_events):
    relay.enqueue("servoki", PURCHASE)
    relay_events.clear()
    assert relay_events.ids == []


def test_datalook_is_filtered_by_its_event_name(relay_events):
    relay.enqueue("datalook", {"event_name": "success", "name": "paid", "page_path": "/ok",
                               "properties": {"email": "a@example.com", "plan": "pro"}})
    relay.enqueue("datalook", {"event_name": "pageview", "page_path": "/"})
    relay.enqueue("servoki", PURCHASE)
    assert [event.type for event in relay_events] == ["success", "pageview", "purchase"]
    success = relay_events.of_type("success").one()
    assert success.payload["properties"] == {"plan": "pro"}  # PII dropped, as in production
    stamped = relay_events.of("datalook", "pageview").one().event_id
    assert re.fullmatch("[0-9a-f]{32}", stamped)
    assert relay_events.by_id(stamped).kind == "datalook"


def test_enqueue_many(relay_events):
    ids = relay.enqueue_many("servoki", [PURCHASE, {**PURCHASE, "event_id": "order_7"}])
    assert relay_events.of("servoki").ids == ids
    assert ids[1] == "order_7"


def test_aenqueue(relay_events):
    event_id = asyncio.run(relay.aenqueue("servoki", PURCHASE))
    assert relay_events.one().event_id == event_id
    with pytest.raises(relay.InvalidEvent) as caught:
        asyncio.run(relay.aenqueue("servoki", BAD))
    assert str(caught.value) == EURO


def test_invalid_event_from_enqueue(relay_events):
    with pytest.raises(relay.InvalidEvent) as caught:
        relay.enqueue("servoki", BAD)
    assert str(caught.value) == EURO
    assert relay_events.ids == []


def test_invalid_event_from_enqueue_many_names_the_item(relay_events):
    with pytest.raises(relay.InvalidEvent) as caught:
        relay.enqueue_many("servoki", [PURCHASE, BAD])
    assert str(caught.value) == "item 1: " + EURO
    assert relay_events.ids == []  # all or nothing


def test_a_configured_enqueuer_is_captured(relay_events):
    enqueuer = relay.configure(servoki_site="shop.example.com")
    with pytest.raises(relay.InvalidEvent) as caught:
        relay.enqueue("servoki", BAD)
    assert str(caught.value) == EURO
    relay.enqueue("servoki", PURCHASE)
    # What the framework helpers do: the enqueuer's own encode and async write.
    event_id, item = enqueuer.encode("datalook", {"event_name": "click", "page_path": "/"})
    asyncio.run(enqueuer.apush([item]))
    assert relay_events.of("servoki").one().payload["site"] == "shop.example.com"
    assert relay_events.of("datalook", "click").ids == [event_id]


def test_the_next_test_has_the_test_settings_again(relay_events):
    relay.enqueue("servoki", PURCHASE)
    assert relay_events.one().payload["site"] == "example.com"


def test_without_the_fixture_the_relay_would_connect():
    # The control: the same call, not captured, reaches for Redis and the guard stops it.
    enqueuer = relay.configure(
        servoki_api_key="servoki_0123456789", servoki_site="example.com",
        redis_url=f"redis://127.0.0.1:{PORT}/0",
    )
    try:
        with pytest.raises(AssertionError, match="connected to"):
            relay.enqueue("servoki", PURCHASE)
    finally:
        enqueuer.close()
"""

FAILING_TEST = """
import relay


def test_looks_for_the_wrong_type(relay_events):
    relay.enqueue("servoki", {"event_type": "purchase", "value": 49.9}, event_id="order_42")
    relay_events.of("servoki", "signup").one()


def test_looks_for_the_wrong_id(relay_events):
    relay.enqueue("datalook", {"event_name": "pageview", "page_path": "/"}, event_id="page_1")
    relay_events.by_id("order_42")


def test_nothing_enqueued(relay_events):
    relay_events.one()
"""


def test_installing_relay_registers_the_plugin() -> None:
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    assert plugins.get("relay") == "relay.testing.plugin", (
        "the pytest11 entry point is missing: reinstall relay (pip install -e .)"
    )


def test_a_users_suite_captures_validates_and_never_connects(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(USER_CONFTEST.format(port=closed_port()))
    pytester.makepyfile(test_shop=USER_TESTS)
    result = pytester.runpytest("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=12)


def test_a_failure_lists_what_was_enqueued(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_wrong=FAILING_TEST)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "E *AssertionError: expected exactly one of the servoki events of type 'signup', "
            "found 0; captured 1 event:",
            'E *servoki purchase id=order_42 {"event_type": "purchase", "value": 49.9, *}',
            "E *AssertionError: no events with id 'order_42'; captured 1 event:",
            'E *datalook pageview id=page_1 {"event_name": "pageview", "page_path": "/"}',
            "E *AssertionError: expected exactly one of the events, found 0; nothing was enqueued",
        ]
    )
    # The relay's own frames are hidden: the failure points at the user's line.
    assert "relay/testing/events.py" not in result.stdout.str()


def test_the_fixture_takes_whole_settings(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import pytest
from relay.settings import Settings

@pytest.fixture
def relay_settings():
    return Settings(servoki_api_key="servoki_0123456789", servoki_site="shop.example.com")
"""
    )
    pytester.makepyfile(
        """
import pytest
import relay

def test_only_what_the_settings_enable(relay_events):
    relay.enqueue("servoki", {"event_type": "purchase"})
    assert relay_events.one().payload["site"] == "shop.example.com"
    with pytest.raises(relay.UnknownDestination):
        relay.enqueue("datalook", {"event_name": "pageview", "page_path": "/"})
"""
    )
    pytester.runpytest("-p", "no:cacheprovider", "-W", "error").assert_outcomes(passed=1)


# -- capture() without pytest's fixture ------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "payload"),
    [
        ("servoki", {"event_type": "purchase", "currency": "euro"}),
        ("servoki", {"value": 1}),
        ("servoki", {"event_type": "purchase", "occurred_at": "2026-06-12T10:00:00"}),
        ("servoki", {"event_type": "purchase", "value": 10**400}),
        ("servoki", {"event_type": "purchase", "colour": "red"}),
        ("datalook", {"event_name": "signup", "page_path": "/"}),
        ("datalook", {"event_name": "success", "page_path": "/"}),
        ("datalook", {"event_name": "click", "page_path": "/", "properties": {"a": [1]}}),
        ("datalook", ["not", "a", "dict"]),
    ],
)
def test_capture_refuses_what_a_real_enqueuer_refuses(destination: str, payload: Any) -> None:
    real = Enqueuer(capture_settings())
    try:
        with pytest.raises(relay.InvalidEvent) as by_real:
            real.encode(destination, payload)
    finally:
        real.close()
    with capture() as events, pytest.raises(relay.InvalidEvent) as captured:
        relay.enqueue(destination, payload)
    assert str(captured.value) == str(by_real.value)
    assert events.ids == []


def test_capture_reads_the_environment_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SERVOKI_SITE", "shop.example.com")
    monkeypatch.setenv("RELAY_MAX_EVENT_BYTES", "300")
    with capture() as events:
        relay.enqueue("servoki", {"event_type": "purchase"})
        with pytest.raises(relay.InvalidEvent, match="at most 300 bytes"):
            relay.enqueue("servoki", {"event_type": "purchase", "props": {"note": "x" * 300}})
    assert events.one().payload["site"] == "shop.example.com"


def test_capture_overrides_win_over_the_test_defaults() -> None:
    with capture(servoki_site="4242") as events:
        relay.enqueue("servoki", {"event_type": "purchase"})
    assert events.one().payload["site"] == "4242"


@pytest.fixture
def process_enqueuer() -> Iterator[Enqueuer]:
    """A process enqueuer set before the capture, as an app's startup would leave it."""
    previous = enqueue_module._default
    mine = Enqueuer(capture_settings())
    enqueue_module._default = mine
    try:
        yield mine
    finally:
        enqueue_module._default = previous
        mine.close()


def test_capture_puts_everything_back(process_enqueuer: Enqueuer) -> None:
    push, apush = Enqueuer.__dict__["push"], Enqueuer.__dict__["apush"]
    load_settings = enqueue_module.load_settings
    with pytest.raises(RuntimeError), capture():
        relay.configure()
        raise RuntimeError("the test failed")
    assert enqueue_module._default is process_enqueuer
    assert Enqueuer.__dict__["push"] is push
    assert Enqueuer.__dict__["apush"] is apush
    assert enqueue_module.load_settings is load_settings


def test_capture_records_what_enqueuers_made_before_it(process_enqueuer: Enqueuer) -> None:
    with capture() as events:
        event_id, item = process_enqueuer.encode("servoki", PURCHASE)
        process_enqueuer.push([item])
    assert events.ids == [event_id]


def test_captured_events_read_like_the_queue_item() -> None:
    with capture() as events:
        event_id = relay.enqueue("servoki", PURCHASE)
    event = events.by_id(event_id)
    assert (event.destination, event.kind, event.type) == ("servoki", "servoki", "purchase")
    assert event.item.startswith(b'{"v":1,"d":"servoki","id":"' + event_id.encode())
    assert event.enqueued_at.tzinfo is not None
    assert events[0] == event and list(events[:1]) == [event]
    assert repr(events).startswith("<events (1):\n  servoki purchase id=")
