"""Property-based: every invalid payload is refused naming a field; every valid one reaches the
API exactly as given (plus the stamps), through Redis, the outbox and real HTTP."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.destinations.iso4217 import CURRENCY_CODES
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from relay.sandbox import SandboxProcess
from relay.settings import Settings
from relay.worker import Worker

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

servoki_payload = st.fixed_dictionaries(
    {"event_type": text},
    optional={
        "site": st.sampled_from(["example.com", "shop.example.com", "12345"]),
        "vid": st.text(max_size=20),
        "value": finite,
        "currency": st.sampled_from(sorted(CURRENCY_CODES)),
        "event_id": st.uuids().map(str),
        "occurred_at": st.datetimes(timezones=st.timezones())
        .map(lambda d: d.isoformat())
        .filter(lambda s: "+" in s or "-" in s[10:] or s.endswith("Z")),
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
    from tests.conftest import DATALOOK_KEY, SERVOKI_KEY

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
                expected.setdefault("occurred_at", received[event_id]["occurred_at"])
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
