"""The shortcuts enqueue()'s checks take (issue 11, point 4) decide exactly as the full checks:
a plain scalar is one every check accepts, ids are UUID4s, times are written as before, and
remembered answers (sites, PII keys) are the regexes' answers."""

from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.destinations.base import is_plain_scalar, new_event_id
from relay.destinations.servoki import utc_timestamp
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from tests.support.payloads import offline_enqueuer


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    return offline_enqueuer()


def test_event_ids_are_uuid4_hex() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(hex=event_id)
        assert parsed.hex == event_id
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


class Text(str):
    pass


class Whole(int):
    pass


class Real(float):
    pass


@pytest.mark.parametrize(
    ("value", "plain"),
    [
        (None, True),
        (True, True),
        (False, True),
        ("ascii text", True),
        ("", True),
        (0, True),
        (-(2**999), True),
        (1.5, True),
        (-0.0, True),
        ("é", False),  # checked for lone surrogates the long way
        ("\ud800", False),
        (2**1000, False),
        (10**400, False),
        (math.nan, False),
        (math.inf, False),
        (Text("a"), False),
        (Whole(1), False),
        (Real(1.0), False),
        ([], False),
        ({}, False),
        (b"a", False),
    ],
)
def test_plain_scalars(value: Any, plain: bool) -> None:
    assert is_plain_scalar(value) is plain


scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=2**1020, max_value=2**1030)
    | st.floats()
    | st.text()
    | st.builds(Text, st.text())
    | st.builds(Real, st.floats())
)


@given(value=scalars)
def test_a_plain_scalar_passes_the_full_check(value: Any, enqueuer: Enqueuer) -> None:
    servoki = enqueuer.destinations["servoki"]
    if is_plain_scalar(value):
        servoki.json_value("props.x", value)  # raises if the shortcut were wrong


@given(value=scalars, key=st.text() | st.builds(Text, st.text()))
def test_props_and_properties_decide_as_before(value: Any, key: str, enqueuer: Enqueuer) -> None:
    """Through the whole check, nested and flat: refused values name the member."""
    for destination, payload, field in [
        ("servoki", {"event_type": "p", "props": {"a": [{key: value}]}}, "servoki.props.a[0]"),
        ("datalook", {"event_name": "click", "page_path": "/", "properties": {key: value}}, None),
    ]:
        try:
            enqueuer.encode(destination, payload)
        except InvalidEvent as exc:
            assert str(exc).startswith(field or "datalook.properties"), str(exc)


def old_utc_timestamp(when: datetime) -> str:
    utc = when.astimezone(UTC)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}"
        f"T{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}Z"
    )


@given(
    when=st.datetimes(
        min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
    ),
    offset=st.integers(-23 * 60 - 59, 23 * 60 + 59),
)
def test_times_are_written_as_before(when: datetime, offset: int) -> None:
    local = when.astimezone(timezone(timedelta(minutes=offset)))
    assert utc_timestamp(local) == old_utc_timestamp(local)
    assert utc_timestamp(datetime(7, 3, 4, 5, 6, 7, tzinfo=UTC)) == "0007-03-04T05:06:07Z"


@pytest.mark.parametrize(
    "site", ["example.com", "12345", "a..com", "-a.com", "1" * 21, "Shop.Example.COM", "é.com"]
)
def test_a_remembered_site_is_judged_as_the_first_time(site: str, enqueuer: Enqueuer) -> None:
    def verdict(value: str) -> str:
        try:
            enqueuer.encode("servoki", {"event_type": "p", "site": value})
        except InvalidEvent as exc:
            return str(exc)
        return "ok"

    first = verdict(site)
    assert verdict(site) == first  # now from the cache
    assert verdict(Text(site)) == first  # a str subclass is never cached, judged the same


def test_pii_keys_are_dropped_every_time(enqueuer: Enqueuer) -> None:
    properties = {"Email": "a@b.c", "plan": "pro", "user_phone": "1", Text("SSN"): "x"}
    for _ in range(3):
        _, item = enqueuer.encode(
            "datalook", {"event_name": "click", "page_path": "/", "properties": properties}
        )
        assert '"properties":{"plan":"pro"}' in item.decode()
