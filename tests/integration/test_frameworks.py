"""Flask and FastAPI: the example apps enqueue through the relay's extensions; a worker delivers.

Real Redis and the sandbox; the apps run in-process (Flask's test client; FastAPI through its
lifespan and httpx's ASGI transport). Real servers (gunicorn, uvicorn) are the subject of
tests/faults/test_web_servers.py.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import httpx
import pytest
from flask import Flask

import relay
from relay.contrib import settings_overrides
from relay.contrib.flask import Relay
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer, default_enqueuer
from relay.errors import ConfigError
from relay.settings import Settings
from tests.support.pipeline import delivered_ids, flush
from tests.support.services import relay_env


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The process environment of a web app configured for this test's relay."""
    for name, value in relay_env(settings).items():
        if name.startswith("RELAY_"):
            monkeypatch.setenv(name, value)
    yield
    relay.configure(settings)  # leave no enqueuer bound to this test's closed pools


def fresh(module: str) -> ModuleType:
    sys.modules.pop(module, None)
    return importlib.import_module(module)


def orders(n: int) -> list[dict[str, object]]:
    return [{"id": f"o{i}", "value": 10.0 + i, "currency": "EUR"} for i in range(n)]


@pytest.mark.usefixtures("environment")
def test_flask_app_enqueues_and_a_worker_delivers(
    settings: Settings, sandbox: SandboxProcess
) -> None:
    app = fresh("examples.flask_app").app
    client = app.test_client()
    for order in orders(20):
        answer = client.post("/pay", json=order)
        assert answer.status_code == 200, answer.text
        assert answer.json == {"order": order["id"], "event_id": f"order_{order['id']}"}
    assert client.post("/ping", json=orders(1)[0]).status_code == 200
    refused = client.post("/pay", json={"id": "bad", "value": 1.0, "currency": "euro"})
    assert refused.status_code == 400
    assert "servoki.currency must be a 3-letter ISO 4217 code" in refused.json["error"]
    report = flush(settings)
    assert report.dispatched.delivered == 20 and report.exit_code == 0
    assert delivered_ids(sandbox) == sorted(f"order_o{i}" for i in range(20))


@pytest.mark.usefixtures("environment")
def test_flask_config_keys_override_the_environment_and_are_checked_at_start() -> None:
    app = Flask("shop")
    app.config.update(RELAY_NAMESPACE="from-app-config", SECRET_KEY="not the relay's")
    extension = Relay(app)
    assert app.extensions["relay"] is extension
    assert extension.enqueuer.settings.namespace == "from-app-config"
    assert default_enqueuer() is extension.enqueuer  # relay.enqueue() uses the app's settings

    typo = Flask("typo")
    typo.config["RELAY_REDIS_URLL"] = "redis://elsewhere"
    with pytest.raises(ConfigError, match="RELAY_REDIS_URLL is not a relay setting"):
        Relay(typo)
    bad = Flask("bad")
    bad.config["RELAY_BATCH_SIZE"] = 0
    with pytest.raises(ConfigError, match="RELAY_BATCH_SIZE"):
        Relay().init_app(bad)


def test_settings_overrides_read_only_the_relay_keys() -> None:
    config = {"RELAY_REDIS_URL": "redis://h/0", "DEBUG": True, "RELAY_SERVOKI_SITE": "s.example"}
    assert settings_overrides(config) == {"redis_url": "redis://h/0", "servoki_site": "s.example"}


@pytest.mark.usefixtures("environment")
def test_fastapi_app_enqueues_through_its_lifespan_and_a_worker_delivers(
    settings: Settings, sandbox: SandboxProcess
) -> None:
    app = fresh("examples.fastapi_app").app

    async def serve() -> Enqueuer:
        async with app.router.lifespan_context(app):  # what uvicorn runs at start and stop
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
                for order in orders(20):
                    answer = await client.post("/pay", json=order)
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["event_id"] == f"order_{order['id']}"
                assert (await client.post("/ping", json=orders(1)[0])).status_code == 200
                bad = {"id": "bad", "value": 1, "currency": "euro"}
                refused = await client.post("/pay", json=bad)
                assert refused.status_code == 400
                assert "servoki.currency must be a 3-letter" in refused.json()["error"]
            enqueuer = default_enqueuer()
            assert len(enqueuer._async) == 1  # the app's loop has its pool
        return enqueuer

    enqueuer = asyncio.run(serve())
    assert len(enqueuer._async) == 0  # the lifespan closed it at shutdown
    report = flush(settings)
    assert report.dispatched.delivered == 20 and report.exit_code == 0
    assert delivered_ids(sandbox) == sorted(f"order_o{i}" for i in range(20))


@pytest.mark.usefixtures("environment")
def test_fastapi_lifespan_checks_the_settings_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    from relay.contrib.fastapi import relay_lifespan

    lifespan = relay_lifespan(batch_size=0)

    async def start() -> None:
        async with lifespan(None):
            pass

    with pytest.raises(ConfigError, match="RELAY_BATCH_SIZE"):
        asyncio.run(start())
