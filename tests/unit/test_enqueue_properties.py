"""Property-based, enqueue() alone: every invalid payload is refused naming a field, and
whatever odd value a caller passes, enqueue() either refuses it as InvalidEvent or the API's
rules take the body the worker would send (issue 8). No service: encode only."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.destinations.base import field_name
from relay.destinations.iso4217 import CURRENCY_CODES
from relay.dev.sandbox.validation import datalook_event, decode_object, servoki_site
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from relay.queue.wire import parse_items
from relay.worker.delivery import encode_body
from tests.support.payloads import (
    DATALOOK_FIELDS,
    DATALOOK_NAMES,
    SERVOKI_FIELDS,
    SERVOKI_NAMES,
    aware,
    datalook_payload,
    offline_enqueuer,
    servoki_payload,
)

WRONG: dict[str, Any] = {
    "str": 12,
    "num": "12",
    "bool": "true",
    "obj": [1, 2],
}


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    return offline_enqueuer()


@given(
    payload=servoki_payload,
    field=st.sampled_from(sorted(SERVOKI_FIELDS)),
)
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_invalid_servoki_payloads_name_the_field(
    enqueuer: Enqueuer, payload: dict[str, Any], field: str
) -> None:
    broken = {**payload, field: WRONG[SERVOKI_FIELDS[field]]}
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("servoki", broken)
    assert info.value.field.startswith(f"servoki.{field}")
    assert str(info.value).startswith(f"servoki.{field}")


@given(payload=datalook_payload, field=st.sampled_from(sorted(DATALOOK_FIELDS)))
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_invalid_datalook_payloads_name_the_field(
    enqueuer: Enqueuer, payload: dict[str, Any], field: str
) -> None:
    broken = {**payload, field: WRONG[DATALOOK_FIELDS[field]]}
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("datalook", broken)
    assert info.value.field.startswith(f"datalook.{field}")


@given(extra=st.text(min_size=1, max_size=10), payload=servoki_payload)
@settings(max_examples=100, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_unknown_fields_are_refused(
    enqueuer: Enqueuer, extra: str, payload: dict[str, Any]
) -> None:
    if extra in SERVOKI_FIELDS:
        return
    with pytest.raises(InvalidEvent, match=re.escape(f"servoki.{extra} must be absent")):
        enqueuer.encode("servoki", {**payload, extra: 1})


# -- any value at all: InvalidEvent, or a body the API and the outbox take (issue 8) ------------

odd_text = (
    st.text(st.characters(exclude_categories=()), max_size=12)
    | st.text(st.characters(max_codepoint=0x20), max_size=4)  # NUL and control characters
    | st.sampled_from(
        [
            "",
            " ",
            "\x00",
            "a\x00b",
            "\ud800",
            "x\udfffy",
            "\ud83d\ude00",  # a pair of surrogates is two lone ones in Python
            "x" * 201,
            "😀" * 200,
            "EUR",
            "eur",
            "12345",
            "example.com",
            "Shop.Example.com",
            "purchase",
            "success",
            "click",
            "/checkout",
            "2026-06-12T10:00:00Z",
            "2026-06-12T12:00:00.5+02:00",
            "2026-06-12T10:00:00",
            "2026-W24-5T10:00:00Z",
            "20260612T100000Z",
            "2026-06-12",
            "0001-01-01T00:00:00+01:00",
            "1781258400",
        ]
    )
)
# Values that broke enqueue() before (issue 8) come first: Hypothesis tries them early and often.
SPECIAL: list[Any] = [
    10**400,
    ["EUR"],
    "\x00",
    "\ud800",
    -(10**400),
    2**1024,
    float("nan"),
    float("inf"),
    2**53,
    True,
    None,
    "",
    {"a": 10**400},
    {1: "x"},
    [float("-inf")],
    b"EUR",
    object(),
    date(2026, 6, 12),
    datetime(2026, 6, 12, 10),
    datetime.max.replace(tzinfo=UTC),
]
odd_number = (
    st.integers()
    | st.floats()  # nan, inf, -0.0, subnormals
    | st.sampled_from([10**400, -(10**400), 2**53, 2**53 - 1, 10**308, 2**1024 - 1, 2**1024])
)
odd_leaf = (
    st.sampled_from(SPECIAL)
    | odd_number
    | odd_text
    | st.none()
    | st.booleans()
    | st.binary(max_size=3)
    | st.frozensets(st.integers(), max_size=2)
    | st.tuples(st.integers())
    | st.dates()
    | st.datetimes()  # naive
    | aware
)
odd_key = odd_text | st.integers() | st.none() | st.booleans() | st.tuples(st.integers())
odd_value = st.recursive(
    odd_leaf,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_key, inner, max_size=3),
    max_leaves=10,
)
# Per field, values near its rule as well as anything at all, so that many are accepted too.
NEAR_VALID: dict[str, st.SearchStrategy[Any]] = {
    "site": st.integers(-1, 2**54)
    | st.sampled_from(["example.com", "12345", "1" * 21, "Shop.Example.COM", "a..com", "-a.com"]),
    "currency": st.sampled_from(sorted(CURRENCY_CODES)),
    "occurred_at": aware
    | aware.map(datetime.isoformat)
    | aware.map(lambda d: d.isoformat(timespec="seconds").replace("+00:00", "Z"))
    | st.datetimes().map(datetime.isoformat),
    "props": st.dictionaries(odd_text, odd_value, max_size=4),
    "properties": st.dictionaries(odd_text, odd_leaf, max_size=4),
    "consent": st.booleans(),
    "event_name": st.sampled_from(["pageview", "click", "success", "custom", "Click"]),
}


def any_value(name: str) -> st.SearchStrategy[Any]:
    return st.one_of(NEAR_VALID.get(name, st.nothing()), odd_text, odd_number, odd_value)


def names_a_field(exc: InvalidEvent, destination: str, payload: dict[str, Any]) -> bool:
    """The error's field is one of the payload's or the API's fields (or the event_id)."""
    prefix = f"{destination}."
    if not exc.field.startswith(prefix):
        return False
    named = exc.field[len(prefix) :]
    roots = {field_name(key) for key in payload} | set(SERVOKI_NAMES + DATALOOK_NAMES)
    return any(named == root or named.startswith((f"{root}.", f"{root}[")) for root in roots)


def refused_or_sent(
    enqueuer: Enqueuer, destination: str, payload: dict[str, Any], event_id: Any = None
) -> None:
    """enqueue()'s checks either refuse ``payload`` naming a field, or the drain takes the queue
    item whole and the API's rules accept the body the worker sends from the outbox row."""
    try:
        sent_id, item = enqueuer.encode(destination, payload, event_id)
    except InvalidEvent as exc:
        assert names_a_field(exc, destination, payload), str(exc)
        return
    batch = parse_items([item], frozenset({"servoki", "datalook"}), 32 * 1024)
    assert batch.poison == []
    (event,) = batch.events
    assert event.event_id == sent_id and "\x00" not in sent_id
    sent_id.encode()  # no lone surrogate: the outbox column is UTF-8 text
    body = decode_object(encode_body(event.payload))
    if destination == "servoki":
        servoki_site(body)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", body["occurred_at"])
    else:
        datalook_event(body)


@pytest.mark.parametrize("name", SERVOKI_NAMES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_servoki_any_value_is_refused_or_accepted_by_the_api(
    enqueuer: Enqueuer, name: str, data: st.DataObject
) -> None:
    payload = {**data.draw(servoki_payload), name: data.draw(any_value(name), label=name)}
    refused_or_sent(enqueuer, "servoki", payload)


@pytest.mark.parametrize("name", DATALOOK_NAMES)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_datalook_any_value_is_refused_or_accepted_by_the_api(
    enqueuer: Enqueuer, name: str, data: st.DataObject
) -> None:
    payload = {**data.draw(datalook_payload), name: data.draw(any_value(name), label=name)}
    refused_or_sent(enqueuer, "datalook", payload)


@given(
    s_payload=servoki_payload,
    d_payload=datalook_payload,
    changes=st.dictionaries(st.sampled_from(SERVOKI_NAMES + DATALOOK_NAMES), odd_value, max_size=3),
    extra=st.dictionaries(odd_key, odd_value, max_size=1),
    event_id=st.none() | odd_text | odd_value,
)
@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_anything_at_all_is_refused_or_accepted_by_the_api(
    enqueuer: Enqueuer,
    s_payload: dict[str, Any],
    d_payload: dict[str, Any],
    changes: dict[str, Any],
    extra: dict[Any, Any],
    event_id: Any,
) -> None:
    """Several odd fields at once, undocumented keys of any type, any event_id argument."""
    for destination, payload in (("servoki", s_payload), ("datalook", d_payload)):
        names = SERVOKI_NAMES if destination == "servoki" else DATALOOK_NAMES
        mine = {k: v for k, v in changes.items() if k in names}
        refused_or_sent(enqueuer, destination, {**payload, **mine, **extra}, event_id)
