"""Payload strategies (Hypothesis) for both APIs, and an enqueuer that only encodes.

Shared by the unit property tests (validation) and the integration ones (the outbox, real HTTP).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import strategies as st

from relay.destinations.iso4217 import CURRENCY_CODES
from relay.enqueue import Enqueuer
from relay.settings import Settings
from tests.support.services import DATALOOK_KEY, SERVOKI_KEY


def offline_enqueuer() -> Enqueuer:
    """An enqueuer for encode() alone: its Redis is never contacted."""
    return Enqueuer(
        Settings(
            redis_url="redis://127.0.0.1:1",
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
            datalook_api_key=DATALOOK_KEY,
            datalook_url="https://dl.example.com",
        )
    )


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

# Aware times as callers hold them: a fixed offset in minutes, or a zone.
aware = st.datetimes(
    min_value=datetime(1990, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
        lambda m: timezone(timedelta(minutes=m))
    )
    | st.timezones(),
)


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

SERVOKI_NAMES = sorted(SERVOKI_FIELDS)
DATALOOK_NAMES = [
    "event_name",
    "page_path",
    "name",
    "success_user_id",
    "success_value",
    "properties",
]
