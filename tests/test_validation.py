"""Every validation rule of enqueue(), with its message; no service needed (encode only)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent, UnknownDestination
from relay.settings import Settings
from tests.conftest import DATALOOK_KEY, SERVOKI_KEY


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    return Enqueuer(
        Settings(
            redis_url="redis://127.0.0.1:1",  # never contacted: these tests only encode
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
            datalook_api_key=DATALOOK_KEY,
            datalook_url="https://dl.example.com",
        )
    )


def body(enqueuer: Enqueuer, destination: str, payload: Any, **kw: Any) -> dict[str, Any]:
    _, item = enqueuer.encode(destination, payload, **kw)
    result: dict[str, Any] = json.loads(item)["p"]
    return result


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
        "servoki.event_id must be a non-empty string of at most 200 characters, got ''",
    ),
    ({"event_type": "p", "event_id": 7}, "servoki.event_id must be a non-empty string"),
    (
        {"event_type": "p", "event_id": "x" * 201},
        "servoki.event_id must be a non-empty string of at most 200",
    ),
    (
        {"event_type": "p", "occurred_at": "yesterday"},
        "servoki.occurred_at must be an aware datetime or an ISO 8601 string with offset",
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
    ({"event_type": "p", "props": {"a": math.nan}}, "servoki.props.a must be a JSON value"),
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
    stamped = datetime.fromisoformat(sent["occurred_at"])
    assert stamped.tzinfo is not None and before <= stamped <= datetime.now(UTC)


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


def test_servoki_aware_datetime_becomes_iso(enqueuer: Enqueuer) -> None:
    when = datetime(2026, 6, 12, 10, 0, tzinfo=timezone(timedelta(hours=2)))
    sent = body(enqueuer, "servoki", {"event_type": "p", "occurred_at": when})
    assert sent["occurred_at"] == "2026-06-12T10:00:00+02:00"


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
