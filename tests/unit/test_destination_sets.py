"""Many DataLook keys as one ``[destination_sets.NAME]`` table: every tenant a destination of
its own, keys out of the config file, and each mistake one ConfigError that names the table and
the tenant and shows no key."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from relay.enqueue import Enqueuer
from relay.errors import ConfigError
from relay.settings import load_settings
from tests.support.services import ROOT

NO_REDIS = "redis://127.0.0.1:1"  # never contacted: these tests only encode
KEYS = {f"t{i:02d}": f"dl_live_tenant{i:02d}_s3cr3tvalue{i:02d}" for i in range(50)}


def keys_file(directory: Path, keys: dict[str, str], mode: int = 0o600) -> Path:
    path = directory / "customers.keys.toml"
    path.write_text("".join(f'{name} = "{key}"\n' for name, key in keys.items()))
    path.chmod(mode)
    return path


def use_config(monkeypatch: pytest.MonkeyPatch, directory: Path, text: str) -> None:
    config = directory / "relay.toml"
    config.write_text(textwrap.dedent(text))
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    monkeypatch.setenv("RELAY_REDIS_URL", NO_REDIS)


def config_error(monkeypatch: pytest.MonkeyPatch, directory: Path, text: str) -> str:
    use_config(monkeypatch, directory, text)
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = str(info.value)
    for key in KEYS.values():
        assert key not in message and key.rsplit("_", 1)[1] not in message
    return message


def test_fifty_keys_are_one_table_and_a_keys_file(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = keys_file(tmp_path, KEYS)
    use_config(
        monkeypatch,
        tmp_path,
        f"""
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        rate_limit = "400/10s"
        keys_file = "{secrets}"
        prefix = "dl-"
        [retry.dl-t07]
        max_attempts = 3
        """,
    )
    settings = load_settings()
    configs = settings.destination_configs()
    assert list(configs) == [f"dl-{name}" for name in KEYS]
    for name, key in KEYS.items():
        config = configs[f"dl-{name}"]
        assert (config.kind, config.url, config.rate_limit) == (
            "datalook",
            "https://eu.datalook.example",
            "400/10s",
        )
        assert config.api_key.get_secret_value() == key
        assert key not in repr(config)
    assert settings.retry_settings("dl-t07")["max_attempts"] == 3
    client = Enqueuer(settings)
    _, item = client.encode("dl-t42", {"event_name": "click", "page_path": "/"})
    assert json.loads(item)["d"] == "dl-t42"
    client.close()


def test_tenants_take_their_own_settings_and_key_sources(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = keys_file(tmp_path, {"acme": KEYS["t00"]})
    own = tmp_path / "globex.key"
    own.write_text(KEYS["t01"] + "\n")
    monkeypatch.setenv("INITECH_KEY", KEYS["t02"])
    monkeypatch.setenv("DATALOOK_KEY_UMBRELLA_CORP", KEYS["t03"])
    use_config(
        monkeypatch,
        tmp_path,
        f"""
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        api_key_env = "DATALOOK_KEY_{{NAME}}"
        tenants = ["acme", "umbrella-corp"]

        [destination_sets.shops]
        kind = "servoki"
        site = "shop.example.com"
        [destination_sets.shops.tenants.main]
        api_key_env = "SHOP_MAIN_KEY"
        [destination_sets.shops.tenants.outlet]
        api_key_env = "SHOP_OUTLET_KEY"
        site = "outlet.example.com"

        [destination_sets.more]
        kind = "datalook"
        url = "https://eu.datalook.example"
        [destination_sets.more.tenants.globex]
        api_key_file = "{own}"
        url = "https://us.datalook.example"
        rate_limit = "100/10s"
        [destination_sets.more.tenants.initech]
        api_key_env = "INITECH_KEY"
        """,
    )
    monkeypatch.setenv("SHOP_MAIN_KEY", "servoki_mainkey0123456789")
    monkeypatch.setenv("SHOP_OUTLET_KEY", "servoki_outletkey0123456789")
    configs = load_settings().destination_configs()
    assert set(configs) == {"acme", "umbrella-corp", "main", "outlet", "globex", "initech"}
    assert configs["umbrella-corp"].api_key.get_secret_value() == KEYS["t03"]
    assert configs["globex"].api_key.get_secret_value() == KEYS["t01"]
    assert (configs["globex"].url, configs["globex"].rate_limit) == (
        "https://us.datalook.example",
        "100/10s",
    )
    assert configs["initech"].rate_limit == "500/10s"  # the kind's default
    assert configs["main"].options["site"] == "shop.example.com"
    assert configs["outlet"].options["site"] == "outlet.example.com"
    assert configs["main"].url == "https://servoki.com"


def test_a_tenant_named_like_another_destination_is_refused(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = keys_file(tmp_path, {"datalook": KEYS["t00"], "eu": KEYS["t01"]})
    monkeypatch.setenv("RELAY_DATALOOK_API_KEY", KEYS["t02"])
    monkeypatch.setenv("RELAY_DATALOOK_URL", "https://dl.example.com")
    table = f"""
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        """
    assert config_error(monkeypatch, tmp_path, table) == (
        "tenant datalook of [destination_sets.customers] in RELAY_CONFIG is named 'datalook', "
        "like the datalook destination of RELAY_DATALOOK_API_KEY: destination names are unique "
        "(enqueue() and the outbox know a destination by its name); rename one, or give the set "
        "a prefix"
    )
    monkeypatch.delenv("RELAY_DATALOOK_API_KEY")
    monkeypatch.setenv("EU_KEY", KEYS["t03"])
    message = config_error(
        monkeypatch,
        tmp_path,
        table
        + """
        [destinations.eu]
        kind = "datalook"
        url = "https://eu.datalook.example"
        api_key_env = "EU_KEY"
        """,
    )
    assert "tenant eu of [destination_sets.customers] in RELAY_CONFIG is named 'eu', like " in (
        message
    )
    assert "like [destinations.eu] in RELAY_CONFIG" in message
    message = config_error(
        monkeypatch,
        tmp_path,
        f"""
        [destination_sets.a]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        prefix = "x-"
        [destination_sets.b]
        kind = "datalook"
        url = "https://eu.datalook.example"
        prefix = "x-"
        [destination_sets.b.tenants.eu]
        api_key_env = "EU_KEY"
        """,
    )
    assert message.startswith(
        "tenant eu of [destination_sets.b] in RELAY_CONFIG is named 'x-eu', like tenant eu of "
        "[destination_sets.a] in RELAY_CONFIG"
    )


def test_key_mistakes_name_the_tenant_and_where_its_key_came_from(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    table = """
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        """
    secrets = keys_file(tmp_path, {"acme": KEYS["t00"], "globex": "dl_test_s3cr3tvalue01"})
    assert config_error(monkeypatch, tmp_path, table.format(secrets=secrets)) == (
        f"the key of tenant globex of [destination_sets.customers] in RELAY_CONFIG (from "
        f"keys_file {secrets}) does not look like a datalook key (expected "
        "dl_live_<key_id>_<secret>), with a key id of letters and digits and a secret of at "
        "least 8 letters, digits, _ or -; copy the key again from the dashboard"
    )
    secrets = keys_file(tmp_path, {"acme": KEYS["t00"], "globex": KEYS["t00"]})
    assert config_error(monkeypatch, tmp_path, table.format(secrets=secrets)).startswith(
        "tenants acme and globex of [destination_sets.customers] in RELAY_CONFIG have the same key"
    )
    secrets = keys_file(tmp_path, {"acme": KEYS["t00"]}, mode=0o644)
    assert config_error(monkeypatch, tmp_path, table.format(secrets=secrets)) == (
        f"[destination_sets.customers] in RELAY_CONFIG: keys_file {secrets} may be read by other "
        f"users (mode 0644); make it its owner's alone: chmod 600 {secrets}"
    )
    secrets.write_text(f"acme = {KEYS['t00']}\n")  # unquoted: not TOML, and not shown
    secrets.chmod(0o600)
    assert 'is not a TOML file of tenant = "key" lines: Invalid value' in config_error(
        monkeypatch, tmp_path, table.format(secrets=secrets)
    )
    secrets.write_text("acme = 12\n")
    assert f"keys_file {secrets}: acme must be a key in quotes" in config_error(
        monkeypatch, tmp_path, table.format(secrets=secrets)
    )
    assert f"keys_file {tmp_path / 'nope'} cannot be read: No such file" in config_error(
        monkeypatch, tmp_path, table.format(secrets=tmp_path / "nope")
    )


def test_a_tenant_without_a_key_is_refused(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secrets = keys_file(tmp_path, {"acme": KEYS["t00"]})
    message = config_error(
        monkeypatch,
        tmp_path,
        f"""
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        tenants = ["acme", "globex"]
        """,
    )
    assert message == (
        f"tenant globex of [destination_sets.customers] in RELAY_CONFIG has no key: add "
        f'globex = "…" to keys_file {secrets}, or give it api_key_env or api_key_file'
    )
    message = config_error(
        monkeypatch,
        tmp_path,
        """
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        api_key_env = "DL_KEY_{NAME}"
        tenants = ["big-co.eu"]
        """,
    )
    assert message == (
        "tenant big-co.eu of [destination_sets.customers] in RELAY_CONFIG reads its key from "
        "$DL_KEY_BIG_CO_EU, which is not set"
    )
    message = config_error(
        monkeypatch,
        tmp_path,
        f"""
        [destination_sets.customers]
        kind = "datalook"
        url = "https://eu.datalook.example"
        keys_file = "{secrets}"
        [destination_sets.customers.tenants.acme]
        api_key_env = "ACME_KEY"
        """,
    )
    assert message == (
        f"tenant acme of [destination_sets.customers] in RELAY_CONFIG has a key in keys_file "
        f"{secrets} and its own api_key_env: keep one"
    )


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        (
            'kind = "datalook"\nurl = "https://x.io"\n',
            "[destination_sets.s] in RELAY_CONFIG has no tenants: list them in keys_file or in "
            "a tenants table",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\ntenants = ["a/b"]\napi_key_env = "K_{NAME}"',
            "[destination_sets.s] in RELAY_CONFIG: tenant name 'a/b' must start with a letter or "
            "digit and hold only letters, digits, '.', '-' and '_' (it is a destination name)",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\ntenants = ["a", "a"]',
            "[destination_sets.s] in RELAY_CONFIG: tenants lists a more than once",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\ntenants = ["a"]\napi_key_env = "DL_KEY"',
            '[destination_sets.s] in RELAY_CONFIG: api_key_env is a template such as "DATALOOK_'
            "KEY_{NAME}\" (each tenant reads its own variable), got 'DL_KEY'; a key every tenant "
            "shares is no tenant key",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\nprefix = "dl/"\ntenants = ["a"]',
            "[destination_sets.s] in RELAY_CONFIG: prefix must be letters, digits, '.', '-' or "
            "'_', got 'dl/'",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\nsite = "x"\nregion = "eu"\n'
            'tenants = ["a"]\napi_key_env = "K_{NAME}"',
            "tenant a of [destination_sets.s] in RELAY_CONFIG: 'region' is not a datalook "
            "setting (allowed: kind, url, api_key_env, api_key_file, rate_limit)",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\nrate_limit = "lots"\ntenants = ["a"]\n'
            'api_key_env = "K_{NAME}"',
            "rate_limit of tenant a of [destination_sets.s] in RELAY_CONFIG: a rate limit looks "
            "like \"600/60s\" (requests/window), got 'lots'",
        ),
        (
            'kind = "datalook"\ntenants = ["a"]\napi_key_env = "K_{NAME}"',
            'tenant a of [destination_sets.s] in RELAY_CONFIG needs url = "https://…": DataLook '
            "hosts are per account; copy the base URL from the DataLook dashboard",
        ),
        (
            'kind = "datalook"\nurl = "http://x.io"\ntenants = ["a"]\napi_key_env = "K_{NAME}"',
            "url of tenant a of [destination_sets.s] in RELAY_CONFIG must use https://",
        ),
        (
            'kind = "datalook"\nurl = "https://x.io"\n[destination_sets.s.tenants.a]\n'
            'kind = "servoki"\napi_key_env = "K_A"',
            "tenant a of [destination_sets.s] in RELAY_CONFIG: kind is the set's, not a tenant's",
        ),
        (
            'kind = "datalok"\nurl = "https://x.io"\ntenants = ["a"]\napi_key_env = "K_{NAME}"',
            "tenant a of [destination_sets.s] in RELAY_CONFIG: unknown destination kind "
            "'datalok'; known kinds: servoki, datalook",
        ),
    ],
)
def test_set_mistakes_are_named(
    clean_env: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    table: str,
    expected: str,
) -> None:
    monkeypatch.setenv("K_A", KEYS["t00"])
    message = config_error(monkeypatch, tmp_path, "[destination_sets.s]\n" + table + "\n")
    assert message.startswith(expected)


def test_the_example_tenants_file_loads(
    clean_env: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """config/tenants.example.toml and its keys file stay working files (only the keys file's
    path is swapped)."""
    secrets = tmp_path / "datalook-customers.toml"
    secrets.write_text((ROOT / "config" / "datalook-customers.example.toml").read_text())
    secrets.chmod(0o600)
    text = (ROOT / "config" / "tenants.example.toml").read_text()
    config = tmp_path / "relay.toml"
    config.write_text(text.replace("/run/secrets/datalook-customers.toml", str(secrets)))
    monkeypatch.setenv("RELAY_CONFIG", str(config))
    monkeypatch.setenv("INITECH_DATALOOK_KEY", KEYS["t00"])
    settings = load_settings()
    configs = settings.destination_configs()
    assert list(configs) == ["dl-acme", "dl-globex", "dl-big-co", "dl-initech"]
    assert configs["dl-initech"].url == "https://us.datalook.example"
    assert settings.retry_settings("dl-initech")["max_attempts"] == 10
