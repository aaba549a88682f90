"""What each documented response means, per destination (classify), and the retry policy."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import SecretStr

from relay.destinations import DataLook, Servoki
from relay.destinations.base import USER_AGENT, parse_retry_after
from relay.destinations.outcome import Verdict
from relay.settings import DestinationConfig
from relay.worker.retry import RetryPolicy
from tests.support.services import DATALOOK_KEY, SERVOKI_KEY

SERVOKI = Servoki(
    DestinationConfig("servoki", "servoki", "https://servoki.com", SecretStr(SERVOKI_KEY))
)
DATALOOK = DataLook(
    DestinationConfig("datalook", "datalook", "https://dl.example", SecretStr(DATALOOK_KEY))
)


@pytest.mark.parametrize(
    ("dest", "status", "verdict"),
    [
        (SERVOKI, 202, Verdict.DELIVERED),
        (DATALOOK, 204, Verdict.DELIVERED),
        # Only the documented success is a delivery; another 2xx or a 3xx means a wrong URL.
        (DATALOOK, 200, Verdict.PAUSE),
        (SERVOKI, 200, Verdict.PAUSE),
        (SERVOKI, 204, Verdict.PAUSE),
        (DATALOOK, 202, Verdict.PAUSE),
        (DATALOOK, 301, Verdict.PAUSE),
        (SERVOKI, 302, Verdict.PAUSE),
        (SERVOKI, 400, Verdict.DEAD),
        (SERVOKI, 404, Verdict.DEAD),
        (DATALOOK, 410, Verdict.DEAD),
        (DATALOOK, 422, Verdict.DEAD),
        (SERVOKI, 401, Verdict.PAUSE),
        (DATALOOK, 401, Verdict.PAUSE),
        (DATALOOK, 403, Verdict.PAUSE),
        (SERVOKI, 408, Verdict.RETRY),
        (SERVOKI, 429, Verdict.RETRY),
        (DATALOOK, 500, Verdict.RETRY),
        (DATALOOK, 503, Verdict.RETRY),
    ],
)
def test_classify(dest: Servoki | DataLook, status: int, verdict: Verdict) -> None:
    outcome = dest.classify(status, {}, '{"error": "x"}')
    assert outcome.verdict is verdict
    assert outcome.status == status
    if verdict is Verdict.DEAD:
        assert outcome.detail == '{"error": "x"}'  # the response is kept


def test_429_is_throttled_with_retry_after() -> None:
    outcome = DATALOOK.classify(429, {"retry-after": "7"}, "")
    assert outcome.throttled and outcome.retry_after == 7.0 and outcome.detail == "HTTP 429"


def test_retry_after_http_date() -> None:
    later = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    value = parse_retry_after({"Retry-After": later})
    assert value is not None and 28 <= value <= 30
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_request_shape() -> None:
    request = SERVOKI.build_request(b"{}")
    assert request.url == "https://servoki.com/api/events/server" and request.method == "POST"
    assert request.headers["Authorization"] == f"Bearer {SERVOKI_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT and USER_AGENT.startswith("relay/0.1.0")
    assert DATALOOK.build_request(b"{}").url == "https://dl.example/event"
    assert SERVOKI_KEY not in repr(request) and SERVOKI_KEY not in repr(SERVOKI)
    assert DATALOOK.limit_scopes() == ("datalook:key:k1test",)


def test_backoff_is_full_jitter_with_cap_and_floor() -> None:
    policy = RetryPolicy(base=1.0, cap=10.0)
    delays = [policy.delay(4) for _ in range(500)]
    assert 0 <= min(delays) < 1.0 and 7.0 < max(delays) <= 8.0
    assert all(policy.delay(20) <= 10.0 for _ in range(100))
    assert all(policy.delay(1, retry_after=5) >= 5 for _ in range(100))
    assert policy.delay(1, retry_after=10**9) <= policy.retry_after_cap


def test_exhausted_by_attempts_or_age() -> None:
    policy = RetryPolicy(max_attempts=3, max_age=60)
    now = datetime.now(UTC)
    assert policy.exhausted(2, now, now) is None
    assert "after 3 attempts" in (policy.exhausted(3, now, now) or "")
    assert "RELAY_MAX_AGE_SECONDS" in (policy.exhausted(1, now - timedelta(seconds=61), now) or "")


def test_a_wrong_url_names_its_setting_and_what_it_answered() -> None:
    datalook = DataLook(
        DestinationConfig(
            "datalook",
            "datalook",
            "https://www.datalook.example",
            SecretStr(DATALOOK_KEY),
            url_setting="RELAY_DATALOOK_URL",
        )
    )
    outcome = datalook.classify(200, {"content-type": "text/html"}, "<html>Welcome</html>")
    assert outcome.verdict is Verdict.PAUSE and outcome.status == 200
    assert outcome.reason == (
        "RELAY_DATALOOK_URL (https://www.datalook.example) answered HTTP 200 (text/html), not "
        "the datalook API's 204: nothing was delivered; fix the URL, then "
        "`relay destinations resume datalook`"
    )
    moved = datalook.classify(301, {"location": "https://elsewhere.example/"}, "")
    assert "answered HTTP 301 (no content type, to https://elsewhere.example/)" in moved.reason
    assert SERVOKI.classify(401, {}, "bad key").reason == ""  # a refused key: the default
