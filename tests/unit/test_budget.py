"""Budget maths and limiter configuration, without Redis: each limit's budget reaches its
target and never exceeds the limit, limits and egress scopes come from settings, a scope shared
by two destinations takes the stricter limit, an unknown scope is a configuration error."""

from __future__ import annotations

import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from relay.destinations import Servoki
from relay.errors import ConfigError
from relay.limiter import RateLimit, budgets_for, plan
from relay.limiter.budget import SLACK
from relay.settings import DestinationConfig, Settings
from tests.support.limits import make_limiter
from tests.support.services import SERVOKI_KEY

DEFAULT_JITTER = Settings.model_fields["limit_jitter"].default


@pytest.mark.parametrize(("text", "target"), [("600/60s", 0.99), ("500/10s", 0.97)])
def test_default_budgets_reach_their_targets(text: str, target: float) -> None:
    budget = plan(RateLimit.parse(text), DEFAULT_JITTER)
    assert budget.utilisation >= target
    assert budget.worst_window <= budget.limit.limit - SLACK


@given(
    limit=st.integers(min_value=3, max_value=100_000),
    window=st.floats(min_value=0.01, max_value=3600),
    jitter=st.floats(min_value=0, max_value=5),
)
def test_no_budget_can_exceed_its_limit(limit: int, window: float, jitter: float) -> None:
    budget = plan(RateLimit(limit, window), jitter)
    assert budget.capacity >= 1
    assert budget.worst_window <= limit - SLACK + 1e-9


def test_rate_limits_and_egress_scopes_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"servoki_api_key": SERVOKI_KEY, "redis_url": "redis://127.0.0.1:9"}
    with pytest.raises(ConfigError, match="RELAY_SERVOKI_RATE_LIMIT: a rate limit looks like"):
        Settings(**base, servoki_rate_limit="600 per minute").destination_configs()
    with pytest.raises(ConfigError, match="too small to pace safely"):
        Settings(**base, servoki_rate_limit="2/1s").destination_configs()
    hostname = "web-7"
    monkeypatch.setattr("socket.gethostname", lambda: hostname)
    for egress, scope in [
        ("global", "servoki:ip:global"),
        ("host", "servoki:ip:host:web-7"),
        ("nat-eu", "servoki:ip:nat-eu"),
    ]:
        config = Settings(**base, servoki_egress_scope=egress).destination_configs()["servoki"]
        assert Servoki(config).limit_scopes() == (scope,)
    raised = Settings(**base, servoki_rate_limit="1200/60s").destination_configs()["servoki"]
    budgets = budgets_for([Servoki(raised)], 0.1)
    assert budgets["servoki:ip:global"].limit == RateLimit(1200, 60.0)


def test_a_shared_scope_takes_the_stricter_limit(caplog: pytest.LogCaptureFixture) -> None:
    def servoki(name: str, limit: str) -> Servoki:
        key = SecretStr(SERVOKI_KEY)
        return Servoki(DestinationConfig(name, "servoki", "https://x", key, rate_limit=limit))

    budgets = budgets_for([servoki("a", "1200/60s"), servoki("b", "600/60s")], 0.1)
    assert budgets["servoki:ip:global"].limit == RateLimit(600, 60.0)
    assert "different limits" in caplog.text


def test_unknown_scope_is_a_config_error() -> None:
    never_contacted = redis.Redis(host="127.0.0.1", port=1)
    limiter = make_limiter(never_contacted, "budget", "10/1s")
    with pytest.raises(ConfigError, match="no rate limit is configured for scope 'nope'"):
        limiter.reserve(("nope",), 1, 1.0)
