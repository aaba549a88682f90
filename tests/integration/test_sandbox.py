"""The sandbox, driven as a real subprocess over real HTTP (its rules without the server:
tests/unit/test_sandbox_rules.py)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from relay.dev.sandbox import SandboxProcess, SandboxStartError

SERVOKI_KEY = "servoki_test0123456789"
DATALOOK_KEY = "dl_live_k1_s3cr3t"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[SandboxProcess]:
    with SandboxProcess(servoki_limit="10000/60s", datalook_limit="10000/10s") as process:
        yield process


@pytest.fixture(autouse=True)
def _clean(sandbox: SandboxProcess) -> Iterator[None]:
    sandbox.reset()
    yield
    sandbox.configure(
        servoki_limit="10000/60s",
        datalook_limit="10000/10s",
        sites=["example.com", "shop.example.com", "12345"],
    )


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5.0) as http:
        yield http


def servoki(client: httpx.Client, body: Any, key: str | None = SERVOKI_KEY) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.post("/api/events/server", json=body, headers=headers)


def datalook(client: httpx.Client, body: Any, key: str | None = DATALOOK_KEY) -> httpx.Response:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    return client.post("/event", json=body, headers=headers)


PURCHASE = {"site": "example.com", "event_type": "purchase", "value": 49.9, "currency": "EUR"}
PAGEVIEW = {"event_name": "pageview", "page_path": "/pricing"}


# -- Servoki --------------------------------------------------------------------------------


def test_servoki_accepts_documented_body(sandbox: SandboxProcess, client: httpx.Client) -> None:
    body = {
        **PURCHASE,
        "vid": "anon-abc123",
        "event_id": "order_8841",
        "occurred_at": "2026-06-12T10:00:00Z",
        "props": {"plan": "pro", "nested": {"ok": True}},
        "consent": True,
    }
    assert servoki(client, body).status_code == 202
    assert servoki(client, {"site": 12345, "event_type": "signup"}).status_code == 202
    assert servoki(client, {"site": "SHOP.example.com", "event_type": "x"}).status_code == 202
    events = sandbox.events("servoki")
    assert events[0]["body"] == body
    assert events[0]["scope"] == "127.0.0.1"
    assert abs(events[0]["received_at"] - time.time()) < 30


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"event_type": "purchase"}, "site"),
        ({"site": "example.com"}, "event_type"),
        ({"site": "example.com", "event_type": ""}, "event_type"),
        ({"site": "not a domain", "event_type": "x"}, "site"),
        ({"site": True, "event_type": "x"}, "site"),
        ({**PURCHASE, "currency": "euro"}, "currency"),
        ({**PURCHASE, "currency": "eur"}, "currency"),
        ({**PURCHASE, "currency": "EUX"}, "currency"),
        ({**PURCHASE, "value": True}, "value"),
        ({**PURCHASE, "value": "49.90"}, "value"),
        ({**PURCHASE, "vid": 7}, "vid"),
        ({**PURCHASE, "event_id": 8841}, "event_id"),
        ({**PURCHASE, "occurred_at": "yesterday"}, "occurred_at"),
        ({**PURCHASE, "props": ["plan"]}, "props"),
        ({**PURCHASE, "consent": "yes"}, "consent"),
        ({**PURCHASE, "revenue": 1}, "revenue"),
        (["not", "an", "object"], "body"),
    ],
)
def test_servoki_rejects_invalid_body(
    client: httpx.Client, body: Any, field: str, sandbox: SandboxProcess
) -> None:
    response = servoki(client, body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]
    assert sandbox.stats()["servoki"]["statuses"] == {"400": 1}


def test_servoki_rejects_non_finite_and_broken_json(client: httpx.Client) -> None:
    headers = {"Authorization": f"Bearer {SERVOKI_KEY}", "Content-Type": "application/json"}
    raw = b'{"site": "example.com", "event_type": "x", "value": NaN}'
    assert client.post("/api/events/server", content=raw, headers=headers).status_code == 400
    assert client.post("/api/events/server", content=b"{", headers=headers).status_code == 400


def test_servoki_unknown_site_is_404(client: httpx.Client) -> None:
    assert servoki(client, {**PURCHASE, "site": "other.example.org"}).status_code == 404
    assert servoki(client, {**PURCHASE, "site": "999"}).status_code == 404


def test_servoki_sites_are_configurable(sandbox: SandboxProcess, client: httpx.Client) -> None:
    config = sandbox.configure(sites=["blog.example.net"])
    assert config["sites"] == ["blog.example.net"]
    assert servoki(client, {**PURCHASE, "site": "blog.example.net"}).status_code == 202
    assert servoki(client, PURCHASE).status_code == 404


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer servoki_", "Bearer sk_live_123", f"Basic {SERVOKI_KEY}"],
)
def test_servoki_malformed_key_is_401(client: httpx.Client, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.post("/api/events/server", json=PURCHASE, headers=headers)
    assert response.status_code == 401
    assert "error" in response.json()


def test_servoki_revoked_key_is_401(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.revoke(SERVOKI_KEY)
    response = servoki(client, PURCHASE)
    assert response.status_code == 401
    assert SERVOKI_KEY not in response.text
    assert servoki(client, PURCHASE, key="servoki_other").status_code == 202
    sandbox.unrevoke(SERVOKI_KEY)
    assert servoki(client, PURCHASE).status_code == 202


def test_servoki_dedups_on_event_id(sandbox: SandboxProcess, client: httpx.Client) -> None:
    for _ in range(3):
        assert servoki(client, {**PURCHASE, "event_id": "order_1"}).status_code == 202
    assert servoki(client, {**PURCHASE, "event_id": "order_2"}).status_code == 202
    assert servoki(client, PURCHASE).status_code == 202
    assert servoki(client, PURCHASE).status_code == 202
    stats = sandbox.stats()["servoki"]
    assert (stats["accepted"], stats["duplicates"], stats["requests"]) == (4, 2, 6)
    assert stats["statuses"] == {"202": 6}
    assert len(sandbox.events("servoki")) == 4


# -- DataLook -------------------------------------------------------------------------------


def test_datalook_accepts_documented_body(sandbox: SandboxProcess, client: httpx.Client) -> None:
    body = {
        "event_name": "success",
        "name": "paid-customer",
        "page_path": "/checkout/success",
        "success_value": 9.99,
        "success_user_id": "user_42",
        "properties": {"plan": "starter", "seats": 3, "trial": False},
    }
    response = datalook(client, body)
    assert response.status_code == 204
    assert response.content == b""
    assert datalook(client, body).status_code == 204  # no dedup: stored twice
    events = sandbox.events("datalook")
    assert [e["body"] for e in events] == [body, body]
    assert events[0]["scope"] == "k1"
    assert sandbox.stats()["datalook"]["accepted"] == 2


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"page_path": "/"}, "event_name"),
        ({"event_name": "purchase", "page_path": "/"}, "event_name"),
        ({"event_name": "click"}, "page_path"),
        ({"event_name": "click", "page_path": 5}, "page_path"),
        ({"event_name": "success", "page_path": "/"}, "name"),
        ({"event_name": "success", "page_path": "/", "name": ""}, "name"),
        ({**PAGEVIEW, "success_value": True}, "success_value"),
        ({**PAGEVIEW, "success_user_id": 42}, "success_user_id"),
        ({**PAGEVIEW, "properties": {"plan": {"tier": 1}}}, "properties.plan"),
        ({**PAGEVIEW, "properties": {"tags": ["a"]}}, "properties.tags"),
        ({**PAGEVIEW, "properties": "plan=pro"}, "properties"),
        ({**PAGEVIEW, "referrer": "x"}, "referrer"),
    ],
)
def test_datalook_rejects_invalid_body(client: httpx.Client, body: Any, field: str) -> None:
    response = datalook(client, body)
    assert response.status_code == 400
    assert response.json()["field"] == field
    assert field in response.json()["error"]


@pytest.mark.parametrize(
    "key",
    [None, "dl_live_k1", "dl_live_k1_", "dl_live__s3cr3t", "dl_live_k-1_s3cr3t", "dl_test_k1_s"],
)
def test_datalook_malformed_key_is_401(client: httpx.Client, key: str | None) -> None:
    response = datalook(client, PAGEVIEW, key=key)
    assert response.status_code == 401
    assert key is None or key not in response.text


def test_datalook_revoked_key_is_401(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.revoke(DATALOOK_KEY)
    assert datalook(client, PAGEVIEW).status_code == 401
    assert datalook(client, PAGEVIEW, key="dl_live_k1_rotated").status_code == 204
    assert sandbox.stats()["datalook"]["statuses"] == {"204": 1, "401": 1}


def test_datalook_strips_pii_properties(sandbox: SandboxProcess, client: httpx.Client) -> None:
    properties = {"plan": "pro", "Email": "a@b.c", "work_phone": "1", "PASSWORD2": "x", "ssn": "1"}
    assert datalook(client, {**PAGEVIEW, "properties": properties}).status_code == 204
    assert sandbox.events("datalook")[0]["body"]["properties"] == {"plan": "pro"}
    assert sandbox.stats()["datalook"]["pii_stripped"] == 4


# -- rate limits ----------------------------------------------------------------------------


def test_datalook_429_with_retry_after(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(datalook_limit="5/1s")
    statuses = [datalook(client, PAGEVIEW).status_code for _ in range(7)]
    assert statuses == [204] * 5 + [429] * 2
    limited = datalook(client, PAGEVIEW)
    assert limited.status_code == 429
    retry_after = int(limited.headers["Retry-After"])
    assert retry_after == 1
    # A different key id has its own window.
    assert datalook(client, PAGEVIEW, key="dl_live_k2_s").status_code == 204
    time.sleep(retry_after)
    assert datalook(client, PAGEVIEW).status_code == 204
    stats = sandbox.stats()["datalook"]
    assert stats["rate_limited"] == 3
    assert stats["peak_by_scope"] == {"k1": 5, "k2": 1}
    assert stats["limit"] == "5/1s"
    log = sandbox.requests("datalook")
    assert [r["status"] for r in log].count(429) == 3
    assert all(r["retry_after"] == 1 for r in log if r["status"] == 429)


def test_429_does_not_count_and_invalid_does(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(servoki_limit="3/1s")
    assert servoki(client, {"event_type": "x"}).status_code == 400  # counts toward the window
    assert servoki(client, PURCHASE).status_code == 202
    assert servoki(client, PURCHASE).status_code == 202
    for _ in range(3):
        limited = servoki(client, PURCHASE)
        assert (limited.status_code, limited.headers["Retry-After"]) == (429, "1")
    time.sleep(1.05)
    # Hammering while limited did not extend the wait: the window is free again after 1 s.
    assert servoki(client, PURCHASE).status_code == 202
    assert sandbox.stats()["servoki"]["peak_window"] == 3


def test_peak_window_is_tracked_without_limits(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.configure(datalook_limit="1000/0.5s")
    sandbox.configure(datalook_limit=None)
    for _ in range(3):
        assert datalook(client, PAGEVIEW).status_code == 204
    time.sleep(0.55)
    for _ in range(8):
        assert datalook(client, PAGEVIEW).status_code == 204
    time.sleep(0.55)
    assert datalook(client, PAGEVIEW).status_code == 204
    stats = sandbox.stats()["datalook"]
    assert (stats["peak_window"], stats["limit"], stats["window_s"]) == (8, None, 0.5)


def test_clients_that_honour_retry_after_never_arrive_early(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.configure(servoki_limit="2/1s")
    before = time.monotonic()
    for _ in range(5):
        response = servoki(client, PURCHASE)
        if response.status_code == 429:
            time.sleep(int(response.headers["Retry-After"]))
    log = sandbox.requests("servoki")
    assert all(before <= r["t"] <= time.monotonic() for r in log)  # one clock for both processes
    for limited in (r for r in log if r["status"] == 429):
        ends = limited["t"] + limited["retry_after"]
        assert not [r for r in log if limited["t"] < r["t"] < ends]


# -- faults ---------------------------------------------------------------------------------


def test_error_rate_and_status(sandbox: SandboxProcess, client: httpx.Client) -> None:
    faults = sandbox.set_faults(error_rate=1, error_status=500, apis=["datalook"])
    assert faults["error_rate"] == 1.0
    assert (faults["error_status"], faults["apis"]) == (500, ["datalook"])
    assert datalook(client, PAGEVIEW).status_code == 500
    assert servoki(client, PURCHASE).status_code == 202
    sandbox.clear_faults()
    assert datalook(client, PAGEVIEW).status_code == 204
    assert sandbox.stats()["datalook"]["statuses"] == {"204": 1, "500": 1}


def test_outage_answers_503_everywhere(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.set_faults(outage=True)
    assert servoki(client, PURCHASE).status_code == 503
    assert datalook(client, PAGEVIEW, key=None).status_code == 503
    assert sandbox.stats()["servoki"]["accepted"] == 0


def test_drop_closes_connection_without_response(
    sandbox: SandboxProcess, client: httpx.Client
) -> None:
    sandbox.set_faults(drop_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        servoki(client, PURCHASE)
    sandbox.set_faults(drop_rate=0.0, drop_after_rate=1.0)
    with pytest.raises(httpx.RemoteProtocolError):
        servoki(client, {**PURCHASE, "event_id": "order_lost_answer"})
    sandbox.clear_faults()
    assert servoki(client, {**PURCHASE, "event_id": "order_lost_answer"}).status_code == 202
    stats = sandbox.stats()["servoki"]
    assert (stats["dropped"], stats["accepted"], stats["duplicates"]) == (2, 1, 1)
    assert [r["status"] for r in sandbox.requests("servoki")] == [0, 0, 202]


def test_latency_delays_answers(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.set_faults(latency_ms=250)
    started = time.monotonic()
    assert datalook(client, PAGEVIEW).status_code == 204
    assert time.monotonic() - started >= 0.25


def test_force_429(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.set_faults(force_429=2, retry_after=3)
    for _ in range(2):
        response = servoki(client, PURCHASE)
        assert (response.status_code, response.headers["Retry-After"]) == (429, "3")
    assert servoki(client, PURCHASE).status_code == 202
    assert sandbox.stats()["servoki"]["rate_limited"] == 2


def test_bad_fault_is_rejected(sandbox: SandboxProcess) -> None:
    with pytest.raises(ValueError, match="error_rate"):
        sandbox.set_faults(error_rate=2)
    with pytest.raises(ValueError, match="unknown"):
        sandbox.set_faults(explode=True)


# -- control --------------------------------------------------------------------------------


def test_reset_clears_state_but_keeps_config(sandbox: SandboxProcess, client: httpx.Client) -> None:
    sandbox.configure(datalook_limit="1/60s", sites=["a.example.com"])
    sandbox.set_faults(latency_ms=1)
    sandbox.revoke(SERVOKI_KEY)
    assert datalook(client, PAGEVIEW).status_code == 204
    assert datalook(client, PAGEVIEW).status_code == 429
    sandbox.reset()
    stats = sandbox.stats()
    assert stats["datalook"]["requests"] == 0
    assert stats["datalook"]["statuses"] == {}
    assert stats["datalook"]["limit"] == "1/60s"
    assert sandbox.events("datalook") == []
    assert sandbox.set_faults()["latency_ms"] == 0
    assert datalook(client, PAGEVIEW).status_code == 204  # window cleared
    assert servoki(client, {**PURCHASE, "site": "a.example.com"}).status_code == 202


def test_control_rejects_bad_api_parameter(client: httpx.Client) -> None:
    assert client.get("/_sandbox/events", params={"api": "other"}).status_code == 400
    response = client.post("/_sandbox/config", json={"servoki_limit": "fast"})
    assert response.status_code == 400
    assert "servoki_limit" in response.json()["error"]


def test_subprocess_lifecycle() -> None:
    process = SandboxProcess(servoki_limit=None, datalook_limit="50/0.5s", sites=["x.example.com"])
    with process:
        config = process.configure()
        assert config == {
            "servoki_limit": None,
            "datalook_limit": "50/0.5s",
            "sites": ["x.example.com"],
        }
        assert math.isclose(process.stats()["datalook"]["window_s"], 0.5)
    assert process.stop() is None  # already stopped by the with block


def test_subprocess_exit_code_and_start_failure() -> None:
    process = SandboxProcess().start()
    assert process.stop() == 0
    with pytest.raises(SandboxStartError, match="a rate limit looks like"):
        SandboxProcess(servoki_limit="garbage").start()
