"""The sandbox's own rules, without its server: rate limits it parses, and the API rules that
answer any body with a verdict, never a crash."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.dev.sandbox.state import RateLimit
from relay.dev.sandbox.validation import InvalidBody, datalook_event, decode_object, servoki_site
from tests.support.payloads import DATALOOK_NAMES, SERVOKI_NAMES


def test_rate_limit_parsing() -> None:
    assert RateLimit.parse("600/60s") == RateLimit(600, 60.0)
    assert RateLimit.parse("50/0.5s") == RateLimit(50, 0.5)
    assert str(RateLimit.parse("500/10s")) == "500/10s"
    for bad in ("600", "0/1s", "5/0s", "five/1s"):
        with pytest.raises(ValueError):
            RateLimit.parse(bad)


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
