"""The queue item encoder (relay/queue/wire.py encode): orjson where it writes what json.dumps
would, json.dumps for everything else; either way standard JSON that the drain reads back as
given, and the same refusals, with the same messages, as before orjson."""

from __future__ import annotations

import enum
import json
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.destinations.base import Destination
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from relay.queue import wire
from tests.support.payloads import offline_enqueuer

AT = datetime(2026, 6, 12, 10, 0, 0, 123456, tzinfo=UTC)


def stdlib(payload: Any) -> bytes:
    """The encoder as it was: json.dumps, compact, UTF-8, no NaN."""
    item = {"v": 1, "d": "servoki", "id": "e-1", "t": AT.timestamp(), "p": payload}
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def read_back(data: bytes) -> dict[str, Any]:
    batch = wire.parse_items([data], frozenset({"servoki"}), 1 << 20)
    assert not batch.poison, batch.poison
    [event] = batch.events
    assert (event.destination, event.event_id, event.enqueued_at) == ("servoki", "e-1", AT)
    return event.payload


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(payload=st.dictionaries(st.text(), json_values, max_size=6))
def test_the_drain_reads_back_what_json_dumps_would_have_written(payload: dict[str, Any]) -> None:
    data = wire.encode("servoki", "e-1", payload, AT)
    assert json.loads(data) == json.loads(stdlib(payload))  # standard JSON, same values
    assert read_back(data) == payload
    # Same floats to the bit (-0.0, subnormals): repr and orjson both write the shortest form.
    assert repr(read_back(data)) == repr(payload)


def test_plain_payloads_are_the_same_bytes_but_for_exponents() -> None:
    payload = {"event_type": "purchase", "value": 49.9, "props": {"n": [1, True, None, "é\n"]}}
    assert wire.encode("servoki", "e-1", payload, AT) == stdlib(payload)
    assert wire.encode("servoki", "e-1", {"x": 1e-7}, AT).endswith(b'"p":{"x":1e-7}}')
    assert stdlib({"x": 1e-7}).endswith(b'"p":{"x":1e-07}}')


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Text(str):
    pass


class Number(float):
    pass


class Mapping(dict[str, Any]):
    pass


@dataclass
class Point:
    x: int


# What orjson would write but json.dumps refuses: refused as before, with json.dumps's message.
REFUSED: list[tuple[Any, type[Exception], str]] = [
    (math.nan, ValueError, "Out of range float values are not JSON compliant"),
    (-math.inf, ValueError, "Out of range float values are not JSON compliant"),
    ([1, [math.inf]], ValueError, "Out of range float values are not JSON compliant"),
    (uuid.UUID(int=1), TypeError, "Object of type UUID is not JSON serializable"),
    (Colour.RED, TypeError, "Object of type Colour is not JSON serializable"),
    (datetime(2026, 1, 1), TypeError, "Object of type datetime is not JSON serializable"),
    (date(2026, 1, 1), TypeError, "Object of type date is not JSON serializable"),
    (Point(1), TypeError, "Object of type Point is not JSON serializable"),
    ({1, 2}, TypeError, "Object of type set is not JSON serializable"),
    ("a\ud800b", UnicodeEncodeError, "surrogates not allowed"),
    ({"a\udfffb": 1}, UnicodeEncodeError, "surrogates not allowed"),
]


@pytest.mark.parametrize(("value", "error", "message"), REFUSED, ids=lambda v: repr(v)[:20])
def test_what_json_dumps_refuses_is_refused(
    value: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        stdlib({"x": value})
    with pytest.raises(error, match=message):
        wire.encode("servoki", "e-1", {"x": value}, AT)


def test_a_cycle_is_refused_not_a_hang() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    with pytest.raises(ValueError, match="Circular reference detected"):
        wire.encode("servoki", "e-1", {"x": cycle}, AT)


# What orjson refuses or writes otherwise but json.dumps writes: written as json.dumps does.
WRITTEN: list[Any] = [
    2**64,  # over orjson's 64 bits
    -(2**63) - 1,
    10**300,
    {1: "a", None: "b", 2.5: "c", False: "d"},  # non-str keys: json.dumps's "1", "null"...
    Text("text"),
    Number(1.5),
    Mapping(a=1),
    Level.HIGH,
    (1, "tuple"),
    [0.0, -0.0, 5e-324, 1.7976931348623157e308],
    list(range(20_000)),  # more values than the plain check looks at
]


@pytest.mark.parametrize("value", WRITTEN, ids=lambda v: type(v).__name__)
def test_what_json_dumps_writes_is_written_the_same(value: Any) -> None:
    data = wire.encode("servoki", "e-1", {"x": value}, AT)
    assert json.loads(data) == json.loads(stdlib({"x": value}))
    assert read_back(data) == json.loads(stdlib({"x": value}))["p"]


class Unchecked(Destination):
    """A destination whose prepare checks nothing: what reaches the encoder is the payload."""

    kind = "servoki"

    def prepare(
        self, payload: Any, event_id: str | None, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        return "e-1", dict(payload)


@pytest.fixture
def unchecked() -> Enqueuer:
    enqueuer = offline_enqueuer()
    enqueuer.destinations["servoki"] = Unchecked(enqueuer.destinations["servoki"].config)
    return enqueuer


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (math.nan, "servoki must be JSON-serializable fields, got 'Out of range float values"),
        ({1, 2}, "servoki must be JSON-serializable fields, got 'Object of type set is not"),
        (uuid.UUID(int=1), "servoki must be JSON-serializable fields, got 'Object of type UUID"),
        ("a\ud800b", "servoki must be text that is valid Unicode (no lone surrogate such as"),
    ],
    ids=["nan", "set", "uuid", "surrogate"],
)
def test_the_encoder_is_the_last_guard_with_the_same_messages(
    unchecked: Enqueuer, value: Any, message: str
) -> None:
    with pytest.raises(InvalidEvent) as info:
        unchecked.encode("servoki", {"x": value})
    assert str(info.value).startswith(message), str(info.value)


def test_a_big_int_still_passes_the_encoder(unchecked: Enqueuer) -> None:
    _, item = unchecked.encode("servoki", {"x": 2**64})
    assert json.loads(item)["p"] == {"x": 2**64}
