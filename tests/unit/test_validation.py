"""Every validation rule of enqueue(), with its message; no service needed (encode only)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.dev.sandbox.validation import InvalidBody, datalook_event, decode_object, servoki_site
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent, UnknownDestination
from relay.settings import Settings
from tests.support.payloads import offline_enqueuer
from tests.support.services import SERVOKI_KEY


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    return offline_enqueuer()  # its Redis is never contacted: these tests only encode


def body(enqueuer: Enqueuer, destination: str, payload: Any, **kw: Any) -> dict[str, Any]:
    _, item = enqueuer.encode(destination, payload, **kw)
    result: dict[str, Any] = json.loads(item)["p"]
    return result


OCCURRED_AT_RULE = (
    "servoki.occurred_at must be an aware datetime or an ISO 8601 string such as "
    '"2026-06-12T10:00:00Z" or "2026-06-12T12:00:00+02:00"'
)
SERVOKI_BAD = [
    ({"event_type": ""}, "servoki.event_type must be a non-empty string, got ''"),
    ({"site": "example.com"}, "servoki.event_type must be a non-empty string, got nothing"),
    ({"event_type": 3}, "servoki.event_type must be a non-empty string, got 3"),
    (
        {"event_type": "p", "site": "not a domain"},
        "servoki.site must be a domain such as \"shop.example.com\" or a numeric code, got 'not a domain'",
    ),
    ({"event_type": "p", "site": True}, "servoki.site must be a domain"),
    ({"event_type": "p", "vid": 42}, "servoki.vid must be a string, got 42"),
    ({"event_type": "p", "value": True}, "servoki.value must be a number such as 49.90, got True"),
    (
        {"event_type": "p", "value": "49.90"},
        "servoki.value must be a number such as 49.90, got '49.90'",
    ),
    ({"event_type": "p", "value": math.inf}, "servoki.value must be a finite number, got inf"),
    ({"event_type": "p", "value": math.nan}, "servoki.value must be a finite number, got nan"),
    (
        {"event_type": "p", "currency": "euro"},
        "servoki.currency must be a 3-letter ISO 4217 code such as \"EUR\", got 'euro'",
    ),
    ({"event_type": "p", "currency": "XYZ"}, "servoki.currency must be a 3-letter ISO 4217 code"),
    ({"event_type": "p", "currency": "eur"}, "servoki.currency must be a 3-letter ISO 4217 code"),
    (
        {"event_type": "p", "event_id": ""},
        "servoki.event_id must be a non-empty string of at most 200 characters, without NUL (\\x00) or lone surrogates, got ''",
    ),
    ({"event_type": "p", "event_id": 7}, "servoki.event_id must be a non-empty string"),
    (
        {"event_type": "p", "event_id": "x" * 201},
        "servoki.event_id must be a non-empty string of at most 200",
    ),
    (
        {"event_type": "p", "occurred_at": "yesterday"},
        OCCURRED_AT_RULE + ", got 'yesterday'",
    ),
    (
        {"event_type": "p", "occurred_at": "2026-06-12T10:00:00"},
        "servoki.occurred_at must be an aware datetime",
    ),
    (
        {"event_type": "p", "occurred_at": datetime(2026, 1, 1)},
        "servoki.occurred_at must be an aware datetime",
    ),
    (
        {"event_type": "p", "occurred_at": 1700000000},
        "servoki.occurred_at must be an aware datetime",
    ),
    (
        {"event_type": "p", "props": [1]},
        "servoki.props must be a JSON object with string keys, got [1]",
    ),
    ({"event_type": "p", "props": {"a": {1, 2}}}, "servoki.props.a must be a JSON value"),
    ({"event_type": "p", "props": {"a": math.nan}}, "servoki.props.a must be a finite number"),
    ({"event_type": "p", "consent": "yes"}, "servoki.consent must be true or false, got 'yes'"),
    (
        {"event_type": "p", "colour": "red"},
        "servoki.colour must be absent: it is not a servoki field",
    ),
]


@pytest.mark.parametrize(("payload", "message"), SERVOKI_BAD)
def test_servoki_rules(enqueuer: Enqueuer, payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("servoki", payload)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError)
    assert info.value.field.startswith("servoki.")


DATALOOK_BAD = [
    (
        {"page_path": "/"},
        "datalook.event_name must be one of pageview, click, success, custom, got nothing",
    ),
    (
        {"event_name": "purchase", "page_path": "/"},
        "datalook.event_name must be one of pageview, click, success, custom, got 'purchase'",
    ),
    ({"event_name": "click"}, "datalook.page_path must be a non-empty string, got nothing"),
    (
        {"event_name": "click", "page_path": 5},
        "datalook.page_path must be a non-empty string, got 5",
    ),
    (
        {"event_name": "success", "page_path": "/"},
        "datalook.name must be a non-empty string, got nothing",
    ),
    (
        {"event_name": "success", "page_path": "/", "name": ""},
        "datalook.name must be a non-empty string, got ''",
    ),
    (
        {"event_name": "click", "page_path": "/", "success_user_id": 42},
        "datalook.success_user_id must be a string, got 42",
    ),
    (
        {"event_name": "click", "page_path": "/", "success_value": False},
        "datalook.success_value must be a number such as 49.90, got False",
    ),
    (
        {"event_name": "click", "page_path": "/", "success_value": -math.inf},
        "datalook.success_value must be a finite number",
    ),
    (
        {"event_name": "click", "page_path": "/", "properties": "plan=pro"},
        "datalook.properties must be a flat object of string/number/boolean values",
    ),
    (
        {"event_name": "click", "page_path": "/", "properties": {"nested": {"a": 1}}},
        "datalook.properties.nested must be a string, finite number or boolean, got {'a': 1}",
    ),
    (
        {"event_name": "click", "page_path": "/", "properties": {"n": None}},
        "datalook.properties.n must be a string, finite number or boolean, got None",
    ),
    (
        {"event_name": "click", "page_path": "/", "event_id": "x"},
        "datalook.event_id must be absent: it is not a datalook field",
    ),
]


@pytest.mark.parametrize(("payload", "message"), DATALOOK_BAD)
def test_datalook_rules(enqueuer: Enqueuer, payload: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("datalook", payload)
    assert str(info.value).startswith(message)


def test_servoki_stamps_event_id_and_occurred_at(enqueuer: Enqueuer) -> None:
    before = datetime.now(UTC)
    event_id, item = enqueuer.encode("servoki", {"event_type": "purchase"})
    sent = json.loads(item)["p"]
    assert sent["event_id"] == event_id and len(event_id) == 32
    assert sent["site"] == "example.com"  # RELAY_SERVOKI_SITE fills a missing site
    # The API's own form: UTC, whole seconds, "Z" (as in the spec's example).
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", sent["occurred_at"])
    stamped = datetime.fromisoformat(sent["occurred_at"])
    assert before.replace(microsecond=0) <= stamped <= datetime.now(UTC)


def test_servoki_keeps_what_the_caller_gave(enqueuer: Enqueuer) -> None:
    payload = {
        "site": 12345,
        "event_type": "purchase",
        "event_id": "order_8841",
        "occurred_at": "2026-06-12T10:00:00Z",
        "value": 49.9,
        "currency": "EUR",
        "props": {"plan": "pro", "items": [1, 2]},
        "consent": True,
        "vid": "anon-abc123",
    }
    assert body(enqueuer, "servoki", payload) == payload


def test_servoki_event_id_argument(enqueuer: Enqueuer) -> None:
    assert body(enqueuer, "servoki", {"event_type": "p"}, event_id="o-1")["event_id"] == "o-1"
    event_id, _ = enqueuer.encode("servoki", {"event_type": "p", "event_id": "o-2"}, "o-2")
    assert event_id == "o-2"
    with pytest.raises(InvalidEvent, match=r"servoki\.event_id must be the same as the event_id"):
        enqueuer.encode("servoki", {"event_type": "p", "event_id": "o-2"}, "o-3")


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        (datetime(2026, 6, 12, 12, 0, tzinfo=timezone(timedelta(hours=2))), "2026-06-12T10:00:00Z"),
        (datetime(2026, 6, 12, 10, 0, 0, 999999, tzinfo=UTC), "2026-06-12T10:00:00Z"),
        (datetime(2026, 6, 12, 12, 0, tzinfo=ZoneInfo("Europe/Paris")), "2026-06-12T10:00:00Z"),
        (datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))), "2025-12-31T23:30:00Z"),
        ("2026-06-12T10:00:00Z", "2026-06-12T10:00:00Z"),
        ("2026-06-12T12:00:00+02:00", "2026-06-12T10:00:00Z"),
        ("2026-06-12T08:30:00-01:30", "2026-06-12T10:00:00Z"),
        ("2026-06-12T10:00:00+00:00", "2026-06-12T10:00:00Z"),
        ("2026-06-12T10:00:00.5Z", "2026-06-12T10:00:00Z"),
        ("2026-06-12T12:00:00.123456789+02:00", "2026-06-12T10:00:00Z"),
        ("2024-02-29T23:59:59Z", "2024-02-29T23:59:59Z"),
    ],
)
def test_servoki_occurred_at_is_sent_in_utc_with_z(
    enqueuer: Enqueuer, given: object, sent: str
) -> None:
    assert (
        body(enqueuer, "servoki", {"event_type": "p", "occurred_at": given})["occurred_at"] == sent
    )


@pytest.mark.parametrize(
    "given",
    [
        "2026-06-12T10:00:00",  # naive: which zone?
        datetime(2026, 6, 12, 10, 0),  # naive
        "2026-W24-5T10:00:00Z",  # week date (datetime.fromisoformat takes it)
        "2026-W24-5",
        "2026-163T10:00:00Z",  # ordinal date
        "20260612T100000Z",  # basic format (datetime.fromisoformat takes it)
        "20260612T100000+0200",
        "2026-06-12",  # date only
        date(2026, 6, 12),
        "2026-06-12T10:00Z",  # no seconds
        "2026-06-12 10:00:00Z",  # space, not T
        "2026-06-12t10:00:00z",
        "2026-06-12T10:00:00+0200",  # basic offset
        "2026-06-12T10:00:00+02",
        "2026-06-12T10:00:00,5Z",
        "2026-06-12T24:00:00Z",
        "2026-02-30T10:00:00Z",  # no such day
        "2026-06-12T10:00:00+24:00",
        "\uff12\uff10\uff12\uff16-06-12T10:00:00Z",  # fullwidth digits match \d
        " 2026-06-12T10:00:00Z",
        "2026-06-12T10:00:00Z\n",
        "1781258400",  # bare numbers
        1781258400,
        1781258400.0,
        True,
        None,
        ["2026-06-12T10:00:00Z"],
        b"2026-06-12T10:00:00Z",
    ],
)
def test_servoki_occurred_at_refused_forms(enqueuer: Enqueuer, given: object) -> None:
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("servoki", {"event_type": "p", "occurred_at": given})
    assert str(info.value).startswith(OCCURRED_AT_RULE + ", got ")
    assert info.value.field == "servoki.occurred_at"


@pytest.mark.parametrize(
    "given",
    [
        "0001-01-01T00:30:00+01:00",
        "9999-12-31T23:59:59-01:00",
        datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
    ],
)
def test_servoki_occurred_at_outside_the_calendar_in_utc(enqueuer: Enqueuer, given: object) -> None:
    with pytest.raises(
        InvalidEvent,
        match=r"^servoki\.occurred_at must be a time within the years 0001-9999 in UTC",
    ):
        enqueuer.encode("servoki", {"event_type": "p", "occurred_at": given})


def test_servoki_site_required_without_default() -> None:
    plain = Enqueuer(Settings(redis_url="redis://127.0.0.1:1", servoki_api_key=SERVOKI_KEY))
    with pytest.raises(
        InvalidEvent,
        match=r"servoki.site must be your domain or numeric site code \(or set RELAY_SERVOKI_SITE\), got nothing",
    ):
        plain.encode("servoki", {"event_type": "p"})


def test_datalook_strips_pii_and_keeps_the_rest(enqueuer: Enqueuer) -> None:
    payload = {
        "event_name": "success",
        "name": "paid-customer",
        "page_path": "/checkout/success",
        "success_value": 9.99,
        "success_user_id": "user_42",
        "properties": {
            "plan": "starter",
            "Email": "a@b.c",
            "user_phone": "1",
            "password": "x",
            "ssn_last4": "1234",
            "seats": 3,
            "trial": False,
        },
    }
    sent = body(enqueuer, "datalook", payload)
    assert sent["properties"] == {"plan": "starter", "seats": 3, "trial": False}
    assert {k: v for k, v in sent.items() if k != "properties"} == {
        k: v for k, v in payload.items() if k != "properties"
    }
    assert "event_id" not in sent  # DataLook has no such field: the id is the outbox's only


def test_datalook_event_id_argument(enqueuer: Enqueuer) -> None:
    event_id, item = enqueuer.encode("datalook", {"event_name": "click", "page_path": "/"}, "c-1")
    assert event_id == "c-1" and json.loads(item)["id"] == "c-1"


def test_oversized_event_is_rejected(enqueuer: Enqueuer) -> None:
    with pytest.raises(InvalidEvent, match=r"servoki must be at most 32768 bytes once serialized"):
        enqueuer.encode("servoki", {"event_type": "p", "props": {"blob": "x" * 40000}})


def test_payload_must_be_a_mapping(enqueuer: Enqueuer) -> None:
    with pytest.raises(InvalidEvent, match="servoki must be a JSON object"):
        enqueuer.encode("servoki", ["event_type"])  # type: ignore[arg-type]


def test_unknown_destination(enqueuer: Enqueuer) -> None:
    with pytest.raises(
        UnknownDestination,
        match="unknown destination 'datalook-eu'; configured destinations: datalook, servoki",
    ):
        enqueuer.encode("datalook-eu", {})


def test_enqueue_many_names_the_bad_index(enqueuer: Enqueuer) -> None:
    good = {"event_type": "p"}
    with pytest.raises(InvalidEvent, match=r"^item 2: servoki.currency must be"):
        enqueuer.encode_many("servoki", [good, good, {"event_type": "p", "currency": "XX"}])


# -- every bad value is an InvalidEvent naming the field (issue 8) ------------------------------


class Unprintable:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


ODD_VALUES: list[Any] = [
    ["EUR"],
    {"a": 1},
    {1, 2},
    frozenset({"EUR"}),
    ("EUR",),
    b"EUR",
    bytearray(b"x"),
    10**400,
    -(10**400),
    10**5000,  # repr() of it raises ValueError (int max str digits)
    math.nan,
    math.inf,
    True,
    None,
    object(),
    Unprintable(),
    datetime(2026, 1, 1),
    "\x00",
    "a\ud800b",
    "",
    {"a": 10**400},
    [math.nan],
]
SERVOKI_BASE = {"event_type": "p"}
DATALOOK_BASE = {"event_name": "success", "page_path": "/", "name": "n"}


def _refused_or_accepted(
    enqueuer: Enqueuer, destination: str, field: str, payload: dict[str, Any]
) -> None:
    """encode() either refuses naming the field, or sends what the sandbox's rules accept."""
    try:
        _, item = enqueuer.encode(destination, payload)
    except InvalidEvent as exc:
        assert exc.field.startswith(f"{destination}.{field}"), str(exc)
        assert str(exc).startswith(f"{destination}.{field}")
        return
    sent = json.loads(item)["p"]
    if destination == "servoki":
        servoki_site(sent)
    else:
        datalook_event(sent)


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    "field",
    [
        "site",
        "event_type",
        "vid",
        "value",
        "currency",
        "event_id",
        "occurred_at",
        "props",
        "consent",
    ],
)
def test_servoki_every_field_is_total(enqueuer: Enqueuer, field: str, value: Any) -> None:
    _refused_or_accepted(enqueuer, "servoki", field, {**SERVOKI_BASE, field: value})


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
@pytest.mark.parametrize(
    "field", ["event_name", "page_path", "name", "success_user_id", "success_value", "properties"]
)
def test_datalook_every_field_is_total(enqueuer: Enqueuer, field: str, value: Any) -> None:
    _refused_or_accepted(enqueuer, "datalook", field, {**DATALOOK_BASE, field: value})


@pytest.mark.parametrize("value", ODD_VALUES, ids=lambda v: type(v).__name__)
def test_props_and_properties_values_are_total(enqueuer: Enqueuer, value: Any) -> None:
    for payload in ({"x": value}, {"x": {"y": [value]}}):
        try:
            _, item = enqueuer.encode("servoki", {"event_type": "p", "props": payload})
        except InvalidEvent as exc:
            assert exc.field.startswith("servoki.props.x"), str(exc)
        else:
            servoki_site(json.loads(item)["p"])
    try:
        _, item = enqueuer.encode("datalook", {**DATALOOK_BASE, "properties": {"x": value}})
    except InvalidEvent as exc:
        assert exc.field == "datalook.properties.x", str(exc)
    else:
        datalook_event(json.loads(item)["p"])


def test_currency_given_as_a_list(enqueuer: Enqueuer) -> None:
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("servoki", {"event_type": "p", "currency": ["EUR"]})
    assert str(info.value) == (
        "servoki.currency must be a 3-letter ISO 4217 code such as \"EUR\", got ['EUR']"
    )


@pytest.mark.parametrize("huge", [10**400, -(10**400), 10**5000], ids=["1e400", "-1e400", "1e5000"])
def test_numbers_too_large_for_the_api(enqueuer: Enqueuer, huge: int) -> None:
    with pytest.raises(InvalidEvent, match=r"^servoki\.value must be a finite number, got "):
        enqueuer.encode("servoki", {"event_type": "p", "value": huge})
    with pytest.raises(InvalidEvent, match=r"^datalook\.success_value must be a finite number"):
        enqueuer.encode("datalook", {**DATALOOK_BASE, "success_value": huge})
    with pytest.raises(InvalidEvent, match=r"^servoki\.props\.a\.b\[1\] must be a finite number"):
        enqueuer.encode("servoki", {"event_type": "p", "props": {"a": {"b": [1, huge]}}})
    with pytest.raises(InvalidEvent, match=r"^datalook\.properties\.n must be a string, finite"):
        enqueuer.encode("datalook", {**DATALOOK_BASE, "properties": {"n": huge}})
    # The largest numbers a double holds are fine.
    assert body(enqueuer, "servoki", {"event_type": "p", "value": 10**308})["value"] == 10**308


def test_an_unprintable_value_is_still_named(enqueuer: Enqueuer) -> None:
    with pytest.raises(
        InvalidEvent, match=r"^servoki\.value must be a number such as 49\.90, got <"
    ):
        enqueuer.encode("servoki", {"event_type": "p", "value": Unprintable()})
    with pytest.raises(
        InvalidEvent, match=r"^servoki must be a JSON object .*, got <int of 5001 digits>"
    ):
        enqueuer.encode("servoki", 10**5000)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "event_id", ["order\x00 1", "\x00", "order\ud800", "\udfff", " ", "x" * 201, "😀" * 201]
)
def test_event_ids_the_outbox_cannot_store(enqueuer: Enqueuer, event_id: str) -> None:
    for destination, base in (("servoki", SERVOKI_BASE), ("datalook", DATALOOK_BASE)):
        with pytest.raises(InvalidEvent, match=rf"^{destination}\.event_id must be a non-empty"):
            enqueuer.encode(destination, base, event_id)
    with pytest.raises(InvalidEvent, match=r"^servoki\.event_id must be a non-empty"):
        enqueuer.encode("servoki", {**SERVOKI_BASE, "event_id": event_id})


@pytest.mark.parametrize("event_id", ["order\x01\x1f\x7f", "😀" * 200, "ordre-ü", "a b"])
def test_event_ids_with_odd_but_storable_text(enqueuer: Enqueuer, event_id: str) -> None:
    assert enqueuer.encode("servoki", SERVOKI_BASE, event_id)[0] == event_id
    assert enqueuer.encode("datalook", DATALOOK_BASE, event_id)[0] == event_id


def test_a_bad_event_id_argument_is_named_before_comparing(enqueuer: Enqueuer) -> None:
    with pytest.raises(InvalidEvent, match=r"^servoki\.event_id must be a non-empty string"):
        enqueuer.encode("servoki", {**SERVOKI_BASE, "event_id": "o-1"}, 7)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"event_type": "buy\ud800"}, "servoki.event_type"),
        ({"event_type": "p", "vid": "\udc00"}, "servoki.vid"),
        ({"event_type": "p", "props": {"k\ud800": 1}}, "servoki.props"),
        ({"event_type": "p", "props": {"a": ["ok", "\ud800"]}}, "servoki.props.a[1]"),
    ],
)
def test_lone_surrogates_are_named(enqueuer: Enqueuer, payload: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        enqueuer.encode("servoki", payload)
    assert info.value.field == field
    assert "lone surrogate" in str(info.value)


def test_datalook_lone_surrogates_and_odd_keys_are_named(enqueuer: Enqueuer) -> None:
    for properties, field in [
        ({"plan": "\ud800"}, "datalook.properties.plan"),
        ({"\ud800": "x"}, "datalook.properties"),
        ({1: "x"}, "datalook.properties"),
        ({None: "x"}, "datalook.properties"),
    ]:
        with pytest.raises(InvalidEvent) as info:
            enqueuer.encode("datalook", {**DATALOOK_BASE, "properties": properties})
        assert info.value.field == field, str(info.value)
    with pytest.raises(
        InvalidEvent, match=r"^datalook\.page_path must be a non-empty string of valid Unicode"
    ):
        enqueuer.encode("datalook", {**DATALOOK_BASE, "page_path": "/\ud800"})


def test_props_keys_must_be_strings_at_every_depth(enqueuer: Enqueuer) -> None:
    with pytest.raises(
        InvalidEvent, match=r"^servoki\.props\.a must be a JSON object with string keys, got 1"
    ):
        enqueuer.encode("servoki", {"event_type": "p", "props": {"a": {1: "x"}}})
    with pytest.raises(
        InvalidEvent, match=r"^servoki\.props must be a JSON object with string keys"
    ):
        enqueuer.encode("servoki", {"event_type": "p", "props": {(1, 2): "x"}})


def test_props_too_deep_or_cyclic(enqueuer: Enqueuer) -> None:
    deep: Any = "leaf"
    for _ in range(5000):
        deep = {"a": deep}
    with pytest.raises(
        InvalidEvent, match=r"^servoki\.props\.a\.a\.a.* must be JSON nested at most 32 levels deep"
    ):
        enqueuer.encode("servoki", {"event_type": "p", "props": deep})
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    with pytest.raises(
        InvalidEvent, match=r"^servoki\.props\.self.* must be JSON nested at most 32"
    ):
        enqueuer.encode("servoki", {"event_type": "p", "props": cyclic})
    nested: Any = 1
    for _ in range(31):
        nested = [nested]
    assert body(enqueuer, "servoki", {"event_type": "p", "props": {"a": nested}})["props"] == {
        "a": nested
    }


def test_control_characters_and_nul_inside_payload_strings_are_sent(enqueuer: Enqueuer) -> None:
    odd = "a\x00b\x01\x1f\x7f\u0085\u2028😀"
    payload = {"event_type": odd, "vid": odd, "props": {odd: [odd, {odd: odd}]}}
    assert body(enqueuer, "servoki", payload) == {
        **payload,
        "site": "example.com",
        "event_id": ANY_STR,
        "occurred_at": ANY_STR,
    }
    dl = {**DATALOOK_BASE, "page_path": odd, "properties": {odd: odd}}
    assert body(enqueuer, "datalook", dl) == dl


class _AnyStr(str):
    def __eq__(self, other: object) -> bool:
        return isinstance(other, str)

    __hash__ = str.__hash__


ANY_STR = _AnyStr()


@pytest.mark.parametrize(
    "site",
    [2**53, 10**400, -1, 1.0, "1" * 21, "\uff11\uff12\uff13"],
    ids=["2**53", "1e400", "-1", "1.0", "21-digits", "fullwidth"],
)
def test_site_codes_the_api_cannot_read_exactly(enqueuer: Enqueuer, site: object) -> None:
    with pytest.raises(InvalidEvent, match=r"^servoki\.site must be a domain"):
        enqueuer.encode("servoki", {"event_type": "p", "site": site})
    assert body(enqueuer, "servoki", {"event_type": "p", "site": 2**53 - 1})["site"] == 2**53 - 1


def test_datalook_name_when_given_is_not_empty(enqueuer: Enqueuer) -> None:
    # The API refuses an empty rule name on any event, not only on "success".
    with pytest.raises(InvalidEvent, match=r"^datalook\.name must be a non-empty string, got ''"):
        enqueuer.encode("datalook", {"event_name": "click", "page_path": "/", "name": ""})


# -- the sandbox is as strict as the spec, and never crashes -----------------------------------


def _sandbox_refuses(raw: bytes, api: str = "servoki") -> InvalidBody:
    with pytest.raises(InvalidBody) as info:
        decoded = decode_object(raw)
        servoki_site(decoded) if api == "servoki" else datalook_event(decoded)
    return info.value


SERVOKI_OK = b'{"site": "example.com", "event_type": "p", '
DATALOOK_OK = b'{"event_name": "click", "page_path": "/", '


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (SERVOKI_OK + b'"value": 1' + b"0" * 400 + b"}", "value"),
        (SERVOKI_OK + b'"value": 1e400}', "value"),
        (SERVOKI_OK + b'"value": 1' + b"0" * 5000 + b"}", "body"),
        (SERVOKI_OK + b'"currency": ["EUR"]}', "currency"),
        (SERVOKI_OK + b'"props": {"a": [1e400]}}', "props.a[0]"),
        (SERVOKI_OK + b'"props": {"a": 1' + b"0" * 400 + b"}}", "props.a"),
        (SERVOKI_OK + b'"props": {"a": "\\ud800"}}', "props.a"),
        (SERVOKI_OK + b'"event_id": "\\udfff"}', "event_id"),
        (SERVOKI_OK + b'"props": ' + b"[" * 100000 + b"]" * 100000 + b"}", "body"),
        (SERVOKI_OK + b'"occurred_at": "2026-W24-5T10:00:00Z"}', "occurred_at"),
        (SERVOKI_OK + b'"occurred_at": "20260612T100000Z"}', "occurred_at"),
        (SERVOKI_OK + b'"occurred_at": "2026-06-12T10:00:00"}', "occurred_at"),
        (SERVOKI_OK + b'"occurred_at": "2026-06-12"}', "occurred_at"),
        (SERVOKI_OK + b'"occurred_at": 1781258400}', "occurred_at"),
        (SERVOKI_OK + b'"occurred_at": "2026-02-30T10:00:00Z"}', "occurred_at"),
        (DATALOOK_OK + b'"success_value": 1' + b"0" * 400 + b"}", "success_value"),
        (DATALOOK_OK + b'"properties": {"n": 1' + b"0" * 400 + b"}}", "properties.n"),
        (DATALOOK_OK + b'"properties": {"n": 1e999}}', "properties.n"),
        (b'{"event_name": ["click"], "page_path": "/"}', "event_name"),
        (b'{"event_name": {"a": 1}, "page_path": "/"}', "event_name"),
    ],
    ids=lambda v: v if isinstance(v, str) else "raw",
)
def test_sandbox_answers_400_not_a_crash(raw: bytes, field: str) -> None:
    """Each body breaks one rule; the sandbox names it (or the body) and never raises else."""
    api = "servoki" if b'"site"' in raw else "datalook"
    assert _sandbox_refuses(raw, api).field == field


@pytest.mark.parametrize(
    "occurred_at",
    ["2026-06-12T10:00:00Z", "2026-06-12T12:00:00+02:00", "2026-06-12T10:00:00.25Z"],
)
def test_sandbox_takes_iso_8601_timestamps(occurred_at: str) -> None:
    body = {"site": "example.com", "event_type": "p", "occurred_at": occurred_at}
    assert servoki_site(decode_object(json.dumps(body).encode())) == "example.com"


def test_a_caller_type_that_raises_is_still_an_invalid_event(enqueuer: Enqueuer) -> None:
    class Broken(Mapping[str, Any]):
        def __getitem__(self, key: str) -> Any:
            raise RuntimeError("database gone")

        def __iter__(self) -> Iterator[str]:
            return iter(["event_type"])

        def __len__(self) -> int:
            return 1

    with pytest.raises(
        InvalidEvent,
        match=r"^servoki must be a payload of plain JSON values, got 'RuntimeError: database gone'",
    ) as info:
        enqueuer.encode("servoki", Broken())
    assert isinstance(info.value.__cause__, RuntimeError)
