"""Property-based: every invalid payload is refused naming a field; every valid one reaches the
API exactly as given (plus the stamps), through Redis, the outbox and real HTTP; whatever odd
value a caller passes, enqueue() either refuses it as InvalidEvent or the API and the outbox
take what it sends."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from relay.destinations.base import field_name
from relay.destinations.iso4217 import CURRENCY_CODES
from relay.dev.sandbox import SandboxProcess
from relay.dev.sandbox.validation import InvalidBody, datalook_event, decode_object, servoki_site
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.outbox.store import Outbox
from relay.queue.wire import parse_items
from relay.settings import Settings
from relay.worker.delivery import encode_body
from relay.worker.loop import Worker

text = st.text(min_size=1, max_size=20).filter(lambda s: s.strip())
finite = st.floats(allow_nan=False, allow_infinity=False, width=64) | st.integers(-(10**9), 10**9)
json_leaf = (
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False)
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
flat_value = (
    st.text(max_size=10)
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False)
)
prop_key = st.text(min_size=1, max_size=8) | st.sampled_from(["email", "Phone", "password2", "ssn"])
PII = re.compile("email|phone|password|ssn", re.IGNORECASE)  # documented by DataLook

# Aware times as callers hold them: a fixed offset in minutes, or a zone.
aware = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
        lambda m: timezone(timedelta(minutes=m))
    )
    | st.timezones(),
)


def api_time(value: str | datetime) -> str:
    """What the API gets for ``occurred_at``: UTC, whole seconds, Z (computed independently)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


servoki_payload = st.fixed_dictionaries(
    {"event_type": text},
    optional={
        "site": st.sampled_from(["example.com", "shop.example.com", "12345"]),
        "vid": st.text(max_size=20),
        "value": finite,
        "currency": st.sampled_from(sorted(CURRENCY_CODES)),
        "event_id": st.uuids().map(str),
        "occurred_at": st.one_of(aware, aware.map(lambda d: d.isoformat())),
        "props": st.dictionaries(st.text(max_size=5), json_value, max_size=4),
        "consent": st.booleans(),
    },
)
datalook_payload = st.sampled_from(["pageview", "click", "success", "custom"]).flatmap(
    lambda name: st.fixed_dictionaries(
        {
            "event_name": st.just(name),
            "page_path": text,
            **({"name": text} if name == "success" else {}),
        },
        optional={
            "success_user_id": st.text(max_size=20),
            "success_value": finite,
            "properties": st.dictionaries(prop_key, flat_value, max_size=5),
            **({} if name == "success" else {"name": text}),
        },
    )
)

WRONG: dict[str, Any] = {
    "str": 12,
    "num": "12",
    "bool": "true",
    "obj": [1, 2],
}
SERVOKI_FIELDS = {
    "event_type": "str",
    "vid": "str",
    "value": "num",
    "currency": "str",
    "event_id": "str",
    "occurred_at": "bool",
    "props": "obj",
    "consent": "bool",
    "site": "bool",
}
DATALOOK_FIELDS = {
    "event_name": "str",
    "page_path": "str",
    "success_user_id": "str",
    "success_value": "num",
    "properties": "obj",
}


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    from tests.support.services import DATALOOK_KEY, SERVOKI_KEY

    return Enqueuer(
        Settings(
            redis_url="redis://127.0.0.1:1",
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
            datalook_api_key=DATALOOK_KEY,
            datalook_url="https://dl.example",
        )
    )


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


@pytest.mark.slow
def test_valid_payloads_reach_the_api_unchanged(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    relay_settings = make_settings()
    enqueuer = Enqueuer(relay_settings)
    worker = Worker(relay_settings)
    try:

        @given(
            s_payloads=st.lists(
                servoki_payload,
                min_size=1,
                max_size=6,
                unique_by=lambda p: p.get("event_id", id(p)),
            ),
            d_payloads=st.lists(datalook_payload, min_size=1, max_size=6),
        )
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def round_trip(s_payloads: list[dict[str, Any]], d_payloads: list[dict[str, Any]]) -> None:
            sandbox.reset()
            # Ids seen in an earlier example are (rightly) deduplicated by the outbox.
            run = uuid.uuid4().hex[:8]
            s_payloads = [
                {**p, "event_id": f"{run}-{p['event_id']}"} if "event_id" in p else p
                for p in s_payloads
            ]
            s_ids, s_items = enqueuer.encode_many("servoki", s_payloads)
            _, d_items = enqueuer.encode_many("datalook", d_payloads)
            enqueuer.push(s_items + d_items)
            assert worker.flush(max_wait=5).exit_code == 0
            received = {e["body"]["event_id"]: e["body"] for e in sandbox.events("servoki")}
            for event_id, payload in zip(s_ids, s_payloads, strict=True):
                expected = {"site": "example.com", **payload, "event_id": event_id}
                if "occurred_at" in payload:
                    expected["occurred_at"] = api_time(payload["occurred_at"])
                else:
                    expected["occurred_at"] = received[event_id]["occurred_at"]
                assert received[event_id] == expected
            bodies = [e["body"] for e in sandbox.events("datalook")]
            expected_dl = [
                {**p, "properties": {k: v for k, v in p["properties"].items() if not PII.search(k)}}
                if "properties" in p
                else p
                for p in d_payloads
            ]
            assert sorted(map(repr, bodies)) == sorted(map(repr, expected_dl))

        round_trip()
    finally:
        worker.close()
        enqueuer.close()


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
SERVOKI_NAMES = sorted(SERVOKI_FIELDS)
DATALOOK_NAMES = [
    "event_name",
    "page_path",
    "name",
    "success_user_id",
    "success_value",
    "properties",
]
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


# -- what enqueue() accepts, the outbox stores, on both databases --------------------------------

storable_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10) | st.text(
    st.characters(max_codepoint=0x20), min_size=1, max_size=4
)


@given(
    events=st.lists(
        st.tuples(
            st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=190).filter(
                str.strip
            ),
            st.fixed_dictionaries(
                {"event_type": storable_text.filter(str.strip)},
                optional={
                    "vid": storable_text,
                    "props": st.dictionaries(storable_text, st.lists(storable_text), max_size=3),
                },
            ),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda pair: pair[0],
    )
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_what_enqueue_accepts_the_outbox_stores(
    db_url: str, enqueuer: Enqueuer, events: list[tuple[str, dict[str, Any]]]
) -> None:
    items = []
    for event_id, payload in events:
        try:
            items.append(enqueuer.encode("servoki", payload, event_id)[1])
        except InvalidEvent:
            assert "\x00" in event_id  # the only thing generated here that the outbox refuses
    batch = parse_items(items, frozenset({"servoki"}), 32 * 1024)
    engine = make_engine(db_url)
    try:
        # Each example runs on the same database: ids are made unique per example.
        run = uuid.uuid4().hex[:8]
        events_in = [replace(e, event_id=run + e.event_id) for e in batch.events]
        assert Outbox(engine).insert(events_in) == len(events_in)
        with engine.connect() as conn:
            rows = dict(conn.execute(select(outbox.c.event_id, outbox.c.payload)).all())
        for event in events_in:
            assert rows[event.event_id] == event.payload
    finally:
        engine.dispose()


ODD_BUT_STORABLE = "a\x00b\x01\x1f\x7f\u0085\u2028😀"


def test_nul_and_control_characters_inside_payloads_are_stored(
    db_url: str, enqueuer: Enqueuer
) -> None:
    payload = {
        "event_type": ODD_BUT_STORABLE,
        "vid": ODD_BUT_STORABLE,
        "props": {ODD_BUT_STORABLE: [ODD_BUT_STORABLE, {"k": ODD_BUT_STORABLE}]},
    }
    event_id, item = enqueuer.encode("servoki", payload, "order\x01\x1f\x7f😀")
    dl_id, dl_item = enqueuer.encode(
        "datalook",
        {"event_name": "click", "page_path": ODD_BUT_STORABLE, "properties": {"k\x00": "\x00"}},
    )
    batch = parse_items([item, dl_item], frozenset({"servoki", "datalook"}), 32 * 1024)
    engine = make_engine(db_url)
    try:
        assert Outbox(engine).insert(batch.events) == 2
        with engine.connect() as conn:
            rows = dict(conn.execute(select(outbox.c.event_id, outbox.c.payload)).all())
    finally:
        engine.dispose()
    assert rows[event_id] == json.loads(item)["p"]
    assert rows[event_id]["props"] == payload["props"]
    assert rows[dl_id]["properties"] == {"k\x00": "\x00"}


@pytest.mark.parametrize("event_id", ["order\x00 1", "order\ud800"])
def test_ids_enqueue_refuses_the_outbox_cannot_store(
    db_url: str, enqueuer: Enqueuer, event_id: str
) -> None:
    with pytest.raises(InvalidEvent, match=r"^servoki\.event_id must be a non-empty string"):
        enqueuer.encode("servoki", {"event_type": "p"}, event_id)
    # Written by hand (a foreign writer), the same id breaks the insert of its whole batch on
    # PostgreSQL (NUL in text) or on both databases (a lone surrogate is not UTF-8).
    _, item = enqueuer.encode("servoki", {"event_type": "p"}, "placeholder")
    (parsed,) = parse_items([item], frozenset({"servoki"}), 32 * 1024).events
    event = replace(parsed, event_id=event_id)
    engine = make_engine(db_url)
    try:
        if "\x00" in event_id and engine.dialect.name == "sqlite":
            assert Outbox(engine).insert([event]) == 1  # SQLite alone would take it
        else:
            with pytest.raises(Exception, match=r"NUL|surrogates not allowed"):
                Outbox(engine).insert([event])
    finally:
        engine.dispose()


# -- the sandbox answers any body with a verdict, never a crash ----------------------------------

json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([10**400, -(10**400), 2**1024])
    | st.floats(allow_nan=False)  # inf is written as 1e999 below
    | st.text(st.characters(exclude_categories=()), max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(SERVOKI_NAMES + DATALOOK_NAMES) | st.text(max_size=4), inner, max_size=4
        )
    ),
    max_leaves=12,
)


@given(body=st.dictionaries(st.sampled_from(SERVOKI_NAMES + DATALOOK_NAMES), json_like))
@settings(max_examples=300)
def test_the_sandbox_rules_are_total(body: dict[str, Any]) -> None:
    raw = json.dumps(body).replace("Infinity", "1e999").encode()
    for rules in (servoki_site, datalook_event):
        try:
            rules(decode_object(raw))
        except InvalidBody as exc:
            assert exc.field
