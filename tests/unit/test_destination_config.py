"""What settings accept as a destination: keys only over https (plain http to loopback
alone), no credentials, query or fragment in its URL, and keys that look like the API's.
Every refusal names the variable and shows no secret."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.errors import ConfigError
from relay.settings import Settings, load_settings
from tests.support.services import DATALOOK_KEY, SERVOKI_KEY


def config_error(**values: object) -> str:
    with pytest.raises(ConfigError) as info:
        Settings(**values).destination_configs()  # type: ignore[arg-type]
    return str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8765",
        "http://127.9.8.7",
        "http://[::1]:8080",
        "http://localhost:8080",
        "http://LocalHost",
        "https://dl.example.com",
        "https://dl.example.com/v2/",
    ],
)
def test_https_anywhere_and_http_to_loopback_are_taken(clean_env: None, url: str) -> None:
    config = Settings(datalook_api_key=DATALOOK_KEY, datalook_url=url).destination_configs()
    assert config["datalook"].url == url.rstrip("/")


@pytest.mark.parametrize(
    "url",
    [
        "http://dl.example.com",
        "http://10.0.0.5:8080",
        "http://0.0.0.0:8080",
        "http://127.0.0.1.example.com",
        "http://localhost.example.com",
        "http://[::2]",
    ],
)
def test_plain_http_to_other_hosts_is_refused(clean_env: None, url: str) -> None:
    message = config_error(datalook_api_key=DATALOOK_KEY, datalook_url=url)
    assert message.startswith("RELAY_DATALOOK_URL must use https://"), message
    assert "cleartext" in message and "loopback" in message
    message = config_error(servoki_api_key=SERVOKI_KEY, servoki_url=url)
    assert message.startswith("RELAY_SERVOKI_URL must use https://"), message


def test_a_named_destination_over_http_names_its_table(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        '[destinations.eu]\nkind = "datalook"\nurl = "http://eu.datalook.example"\n'
        'api_key_env = "EU_KEY"\n'
    )
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    monkeypatch.setenv("EU_KEY", DATALOOK_KEY)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert str(info.value).startswith(
        "url of [destinations.eu] in RELAY_CONFIG must use https://"
    ), str(info.value)


@pytest.mark.parametrize(
    ("url", "secret", "says"),
    [
        ("https://user:hunter2pw@dl.example.com", "hunter2pw", "user or password"),
        ("https://hunter2pw@dl.example.com", "hunter2pw", "user or password"),
        ("https://dl.example.com/?token=hunter2pw", "hunter2pw", "query string"),
        ("https://dl.example.com/#hunter2pw", "hunter2pw", "fragment"),
    ],
)
def test_credentials_query_and_fragment_in_a_destination_url_are_refused_unshown(
    clean_env: None, url: str, secret: str, says: str
) -> None:
    message = config_error(datalook_api_key=DATALOOK_KEY, datalook_url=url)
    assert message.startswith("RELAY_DATALOOK_URL"), message
    assert says in message
    assert secret not in message


def test_a_url_without_host_is_refused(clean_env: None) -> None:
    message = config_error(datalook_api_key=DATALOOK_KEY, datalook_url="https://")
    assert "RELAY_DATALOOK_URL" in message and "host" in message


@pytest.mark.parametrize("secret", ["a", "abc", "abc_def", "s3cr3t7"])
def test_a_datalook_key_with_an_implausibly_short_secret_is_refused(
    clean_env: None, secret: str
) -> None:
    key = f"dl_live_k1_{secret}"
    message = config_error(datalook_api_key=key, datalook_url="https://dl.example.com")
    assert message.startswith("RELAY_DATALOOK_API_KEY does not look like a datalook key")
    assert "at least 8" in message and "copy the key again" in message
    assert key not in message
