"""enqueue() against a real Redis: one write, all-or-nothing batches, async, settings errors."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

import relay
from relay.enqueue import Enqueuer
from relay.errors import ConfigError
from relay.keys import Keys
from relay.settings import Settings, load_settings
from tests.support.services import DATALOOK_KEY, SECRETS, SERVOKI_KEY


@pytest.fixture
def enqueuer(redis_url: str) -> Iterator[Enqueuer]:
    settings = Settings(
        redis_url=redis_url,
        namespace="enq-" + Path(redis_url).name,
        servoki_api_key=SERVOKI_KEY,
        servoki_site="example.com",
        datalook_api_key=DATALOOK_KEY,
        datalook_url="https://dl.example.com",
    )
    client = relay.configure(settings)
    client._redis.delete(client.keys.queue)
    yield client
    client._redis.delete(client.keys.queue)


def queued(client: Enqueuer) -> list[dict[str, object]]:
    return [json.loads(item) for item in client._redis.lrange(client.keys.queue, 0, -1)]


def rpush_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_rpush", {})
    return int(stats.get("calls", 0))


def test_enqueue_writes_one_item(enqueuer: Enqueuer) -> None:
    event_id = relay.enqueue("servoki", {"event_type": "purchase", "value": 49.9})
    [item] = queued(enqueuer)
    assert item["d"] == "servoki" and item["id"] == event_id
    assert item["p"]["event_id"] == event_id  # type: ignore[index]


def test_enqueue_many_is_one_round_trip(enqueuer: Enqueuer) -> None:
    before = rpush_calls(enqueuer._redis)
    ids = relay.enqueue_many(
        "datalook", [{"event_name": "click", "page_path": f"/{i}"} for i in range(50)]
    )
    assert rpush_calls(enqueuer._redis) == before + 1
    assert [item["id"] for item in queued(enqueuer)] == ids
    assert len(set(ids)) == 50


def test_invalid_event_writes_nothing(enqueuer: Enqueuer) -> None:
    with pytest.raises(relay.InvalidEvent):
        relay.enqueue("servoki", {"event_type": "p", "currency": "euro"})
    good = {"event_name": "click", "page_path": "/"}
    with pytest.raises(relay.InvalidEvent, match=r"^item 1: datalook\.page_path"):
        relay.enqueue_many("datalook", [good, {"event_name": "click"}, good])
    assert queued(enqueuer) == []


def test_a_lone_surrogate_is_invalid_not_a_crash(enqueuer: Enqueuer) -> None:
    with pytest.raises(relay.InvalidEvent) as info:
        relay.enqueue("servoki", {"event_type": "buy\ud800now"})
    assert str(info.value).startswith(
        "servoki.event_type must be a non-empty string of valid Unicode (no lone surrogate"
    )
    assert "buy" in str(info.value)  # where in the event it is
    assert queued(enqueuer) == []


def test_aenqueue(enqueuer: Enqueuer) -> None:
    async def handler() -> list[str]:
        ids = [
            await relay.aenqueue("servoki", {"event_type": "signup"}, event_id="u-1"),
            await relay.aenqueue("datalook", {"event_name": "pageview", "page_path": "/"}),
        ]
        await enqueuer.aclose()
        return ids

    ids = asyncio.run(handler())
    assert ids[0] == "u-1"
    assert [item["id"] for item in queued(enqueuer)] == ids


def test_import_and_enqueue_load_no_celery_sqlalchemy_or_httpx(redis_url: str) -> None:
    script = textwrap.dedent(
        f"""
        import sys, relay
        relay.configure(redis_url={redis_url!r}, namespace="weight",
                        servoki_api_key={SERVOKI_KEY!r}, servoki_site="example.com")
        relay.enqueue("servoki", {{"event_type": "purchase"}})
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"celery", "sqlalchemy", "httpx", "kombu", "alembic"}})
        print(",".join(heavy) or "none")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "none"


def test_embedded_redis_is_found_by_enqueue_in_another_process(tmp_path: Path) -> None:
    from relay.queue import embedded

    home = tmp_path / "home"
    embedded.ensure_running(home)
    try:
        script = textwrap.dedent(
            f"""
            import relay
            relay.configure(home={str(home)!r}, servoki_api_key={SERVOKI_KEY!r},
                            servoki_site="example.com")
            print(relay.enqueue("servoki", {{"event_type": "purchase"}}, event_id="e-1"))
            """
        )
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        client = redis.Redis(unix_socket_path=str(home / "redis.sock"))
        [item] = client.lrange(Keys().queue, 0, -1)
        assert json.loads(item)["id"] == "e-1"
        client.close()
    finally:
        embedded.stop(home)


# -- settings -----------------------------------------------------------------------------


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    for secret in SECRETS:
        assert secret not in message
    return message


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[], None]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(__import__("os").environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)
    return lambda: None


def test_malformed_keys_are_named_not_shown(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = settings_error(monkeypatch, RELAY_SERVOKI_API_KEY="sk_testkey0123456789")
    assert message.startswith(
        "RELAY_SERVOKI_API_KEY does not look like a servoki key (expected servoki_<key>)"
    )
    monkeypatch.delenv("RELAY_SERVOKI_API_KEY")
    message = settings_error(
        monkeypatch, RELAY_DATALOOK_API_KEY="dl_test_s3cr3tvalue", RELAY_DATALOOK_URL="https://x.io"
    )
    assert (
        "RELAY_DATALOOK_API_KEY does not look like a datalook key (expected dl_live_<key_id>_<secret>)"
        in message
    )


def test_datalook_url_is_required(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(monkeypatch, RELAY_DATALOOK_API_KEY=DATALOOK_KEY)
    assert message.startswith("RELAY_DATALOOK_URL is required when RELAY_DATALOOK_API_KEY is set")


def test_bad_url_and_bad_number(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    message = settings_error(
        monkeypatch, RELAY_SERVOKI_API_KEY=SERVOKI_KEY, RELAY_SERVOKI_URL="servoki.com"
    )
    assert "RELAY_SERVOKI_URL must be an http(s) URL" in message
    monkeypatch.setenv("RELAY_SERVOKI_URL", "https://servoki.com")
    assert "RELAY_BATCH_SIZE" in settings_error(monkeypatch, RELAY_BATCH_SIZE="lots")


def test_keys_never_in_repr(clean_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_SERVOKI_API_KEY", SERVOKI_KEY)
    monkeypatch.setenv("RELAY_DATALOOK_API_KEY", DATALOOK_KEY)
    monkeypatch.setenv("RELAY_DATALOOK_URL", "https://dl.example.com")
    settings = load_settings()
    shown = repr(settings) + str(settings) + repr(settings.destination_configs())
    for secret in SECRETS:
        assert secret not in shown


def test_named_destinations_from_toml(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str
) -> None:
    secret_file = tmp_path / "eu.key"
    secret_file.write_text("dl_live_eukey_s3cr3tvalue\n")
    config = tmp_path / "relay.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            batch_size = 200
            [destinations.datalook-eu]
            kind = "datalook"
            url = "https://eu.datalook.example"
            api_key_file = "{secret_file}"
            [destinations.servoki-shop]
            kind = "servoki"
            api_key_env = "SHOP_SERVOKI_KEY"
            site = "shop.example.com"
            [retry.servoki-shop]
            max_attempts = 5
            backoff_cap = 60.0
            """
        )
    )
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    monkeypatch.setenv("SHOP_SERVOKI_KEY", SERVOKI_KEY)
    monkeypatch.setenv("RELAY_REDIS_URL", redis_url)
    settings = load_settings()
    assert settings.batch_size == 200
    configs = settings.destination_configs()
    assert set(configs) == {"datalook-eu", "servoki-shop"}
    assert configs["servoki-shop"].url == "https://servoki.com"
    assert settings.retry_settings("servoki-shop") == {
        "max_attempts": 5, "max_age_seconds": 259200.0, "backoff_base": 2.0,
        "backoff_cap": 60.0, "retry_after_cap": 3600.0,
    }  # fmt: skip
    assert settings.retry_settings("datalook-eu")["max_attempts"] == 25  # the global default
    client = Enqueuer(settings)
    _, item = client.encode("datalook-eu", {"event_name": "click", "page_path": "/"})
    assert json.loads(item)["d"] == "datalook-eu"
    _, item = client.encode("servoki-shop", {"event_type": "purchase"})
    assert json.loads(item)["p"]["site"] == "shop.example.com"
    with pytest.raises(relay.InvalidEvent, match=r"^datalook-eu.page_path"):
        client.encode("datalook-eu", {"event_name": "click"})
    client.close()


def test_toml_errors(clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    assert "which does not exist" in settings_error(monkeypatch)
    config.write_text('[destinations.x]\nkind = "datalook"\nurl = "https://x.io"\n')
    assert "[destinations.x] in RELAY_CONFIG needs api_key_env or api_key_file" in settings_error(
        monkeypatch
    )
    config.write_text('[destinations.x]\nkind = "datalook"\napi_key_env = "NOPE_KEY"\n')
    assert 'needs url = "https://…"' in settings_error(monkeypatch)
    config.write_text(
        '[destinations.x]\nkind = "datalook"\nurl = "https://x.io"\napi_key_env = "NOPE_KEY"\n'
    )
    assert "reads its key from $NOPE_KEY, which is not set" in settings_error(monkeypatch)
    config.write_text("[destinations.x\n")
    assert "is not valid TOML" in settings_error(monkeypatch)
    config.write_text("[retry.servoki]\nmax_attempts = 3\n")
    assert "[retry.servoki] in RELAY_CONFIG names no enabled destination (enabled: none)" in (
        settings_error(monkeypatch)
    )
    config.write_text("[retry.servoki]\nmax_atempts = 3\n")
    assert "RELAY_RETRY_SERVOKI_MAX_ATEMPTS: Extra inputs are not permitted" in settings_error(
        monkeypatch
    )


def test_the_example_config_file_loads(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """config/relay.example.toml stays a working file (only its secret path is swapped)."""
    from tests.support.services import ROOT

    secret = tmp_path / "servoki-shop"
    secret.write_text(SERVOKI_KEY)
    text = (ROOT / "config" / "relay.example.toml").read_text()
    config = tmp_path / "relay.toml"
    config.write_text(text.replace("/run/secrets/servoki-shop", str(secret)))
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    monkeypatch.setenv("DATALOOK_EU_API_KEY", DATALOOK_KEY)
    monkeypatch.setenv("RELAY_DATALOOK_API_KEY", DATALOOK_KEY)
    monkeypatch.setenv("RELAY_DATALOOK_URL", "https://dl.example.com")
    settings = load_settings()
    settings.check_lease()
    assert set(settings.destination_configs()) == {"datalook", "datalook-eu", "servoki-shop"}
    assert settings.retry_settings("datalook")["max_attempts"] == 10
