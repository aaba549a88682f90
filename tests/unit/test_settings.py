"""Settings as an operator writes them: RELAY_* variables and a TOML file, each mistake one
clear ConfigError that names the variable and shows no key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import relay
from relay.enqueue import Enqueuer
from relay.errors import ConfigError
from relay.settings import load_settings
from tests.support.services import DATALOOK_KEY, ROOT, SECRETS, SERVOKI_KEY

NO_REDIS = "redis://127.0.0.1:1"  # never contacted: these tests only encode


def settings_error(monkeypatch: pytest.MonkeyPatch, **env: str) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    for secret in SECRETS:
        assert secret not in message
    return message


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
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
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
    monkeypatch.setenv("RELAY_REDIS_URL", NO_REDIS)
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
