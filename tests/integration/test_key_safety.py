"""Keys and passwords stay secret: no key over plain HTTP except to loopback, one redaction
(the destination's) everywhere, URLs masked in userinfo and query string, and Redis scripts
that declare every key they touch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path

import pytest
import redis

from relay.destinations import build_destinations
from relay.enqueue import Enqueuer
from relay.errors import ConfigError, RelayUnavailable
from relay.keys import Keys
from relay.ops.admin import Admin
from relay.queue.consumer import Queue
from relay.settings import Settings, load_settings
from relay.urls import describe_error, safe_url, scrub
from relay.urls import safe_url as light_safe_url
from tests.support.services import DATALOOK_KEY, ROOT, SECRETS, SERVOKI_KEY, relay_env

# A DataLook key whose secret holds an underscore: dl_live_<key_id>_<secret>.
UNDERSCORE_KEY = "dl_live_k7prod_s3cr3t_with_underscore"
UNDERSCORE_SECRET = "s3cr3t_with_underscore"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)


def config_error(**values: object) -> str:
    with pytest.raises(ConfigError) as info:
        Settings(**values).destination_configs()  # type: ignore[arg-type]
    return str(info.value)


# -- 1. plain http:// only to loopback ------------------------------------------------------


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


# -- 2. one redaction, the destination's ----------------------------------------------------


def test_a_datalook_secret_with_underscores_is_redacted_everywhere(clean_env: None) -> None:
    settings = Settings(datalook_api_key=UNDERSCORE_KEY, datalook_url="https://dl.example.com")
    [destination] = build_destinations(settings.destination_configs()).values()
    assert set(destination.secrets()) == {UNDERSCORE_KEY, UNDERSCORE_SECRET}
    text = f"Bearer {UNDERSCORE_KEY}; secret={UNDERSCORE_SECRET}; key id k7prod"
    redacted = destination.redact(text)
    assert redacted == "Bearer ***; secret=***; key id k7prod"  # the key id is not secret
    admin = Admin(settings)
    assert admin.redact(text) == redacted  # the CLI uses the same redaction


@pytest.mark.parametrize("secret", ["a", "abc", "abc_def", "s3cr3t7"])
def test_a_datalook_key_with_an_implausibly_short_secret_is_refused(
    clean_env: None, secret: str
) -> None:
    key = f"dl_live_k1_{secret}"
    message = config_error(datalook_api_key=key, datalook_url="https://dl.example.com")
    assert message.startswith("RELAY_DATALOOK_API_KEY does not look like a datalook key")
    assert "at least 8" in message and "copy the key again" in message
    assert key not in message


def test_a_key_is_redacted_whatever_its_length() -> None:
    """Only the settings check keys: a destination built around them still hides a short one."""
    from pydantic import SecretStr

    from relay.destinations import DataLook
    from relay.settings import DestinationConfig

    config = DestinationConfig("x", "datalook", "https://dl.example", SecretStr("xk9"))
    assert DataLook(config).redact("sent xk9 to k") == "sent *** to k"


def test_cli_output_masks_a_secret_with_underscores(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(datalook_api_key=UNDERSCORE_KEY)
    env = relay_env(settings, RELAY_DATALOOK_API_KEY=UNDERSCORE_KEY)
    reason = f"rotating, old secret {UNDERSCORE_SECRET}"
    paused = run_relay(env, "destinations", "pause", "datalook", "--reason", reason, "--json")
    assert paused.returncode == 0, paused.stderr
    shown = run_relay(env, "status")
    assert shown.returncode == 0, shown.stderr
    as_json = run_relay(env, "status", "--json")
    assert json.loads(as_json.stdout)["destinations"]["datalook"]["paused_reason"] == (
        "rotating, old secret ***"
    )
    for result in (paused, shown, as_json):
        output = result.stdout + result.stderr
        assert UNDERSCORE_SECRET not in output and UNDERSCORE_KEY not in output
        assert "old secret ***" in output


# -- 3. URLs masked in userinfo and query string --------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pwA@h:6379/0?password=pwB", "redis://***@h:6379/0?password=***"),
        ("rediss://user:pwA@h:6380/1", "rediss://user:***@h:6380/1"),
        ("redis://pwA@h:6379", "redis://***@h:6379"),
        ("redis://h:6379?password=pwB&db=2", "redis://h:6379?password=***&db=2"),
        ("unix://:pwA@/tmp/r.sock?db=0&password=pwB", "unix://***@/tmp/r.sock?db=0&password=***"),
        ("unix:///tmp/r@1.sock?password=pwB", "unix:///tmp/r@1.sock?password=***"),
        (
            "postgresql+psycopg://relay:pwA@db:5432/relay?sslpassword=pwB&connect_timeout=2",
            "postgresql+psycopg://relay:***@db:5432/relay?sslpassword=***&connect_timeout=2",
        ),
        (
            "postgresql://relay@/relay?host=/run/pg&passfile=/pwB&ssl_key=pwC",
            "postgresql://***@/relay?host=/run/pg&passfile=***&ssl_key=***",
        ),
        ("postgresql://u:p%40wA/x@db/relay", "postgresql://u:***@db/relay"),
        ("sqlite:////srv/relay/outbox.db", "sqlite:////srv/relay/outbox.db"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_one_masking_rule_for_every_url(url: str, shown: str) -> None:
    assert light_safe_url(url) == shown
    assert safe_url(url) == shown  # relay.db's is the same helper
    for secret in ("pwA", "pwB", "pwC", "p@wA"):
        assert secret not in light_safe_url(url)


def test_error_texts_lose_the_passwords_of_a_url() -> None:
    url = "postgresql+psycopg://relay:p%40ssA@db/relay?password=pwB"
    text = "failed for p@ssA (raw p%40ssA) and pwB"
    assert scrub(text, url) == "failed for *** (raw ***) and ***"
    assert describe_error(RuntimeError(text), url) == "RuntimeError: " + scrub(text, url)


def test_enqueue_failure_shows_no_password(tmp_path: Path) -> None:
    client = Enqueuer(
        Settings(
            home=tmp_path,
            redis_url="redis://:hunter2user@127.0.0.1:9/0?password=hunter2query",
            database_url=(
                "postgresql+psycopg://relay:hunter2user@127.0.0.1:9/relay"
                "?sslpassword=hunter2ssl&password=hunter2query"
            ),
            servoki_api_key=SERVOKI_KEY,
            servoki_site="example.com",
        )
    )
    try:
        _, item = client.encode("servoki", {"event_type": "purchase"})
        with pytest.raises(RelayUnavailable) as info:
            client.push([item])
    finally:
        client.close()
    message = str(info.value)
    assert "Redis at redis://***@127.0.0.1:9/0?password=*** failed: ConnectionError" in message
    assert "the outbox database at postgresql+psycopg://relay:***@127.0.0.1:9/relay" in message
    for secret in ("hunter2user", "hunter2query", "hunter2ssl"):
        assert secret not in message


def run_relay(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_shows_no_password_of_unreachable_services(
    make_settings: Callable[..., Settings],
) -> None:
    redis_url = "redis://:hunter2user@127.0.0.1:9/0?password=hunter2query"
    env = relay_env(make_settings(), RELAY_REDIS_URL=redis_url)
    results = [run_relay(env, "status"), run_relay(env, "health")]
    assert results[0].stderr.startswith(
        "error: Redis at redis://***@127.0.0.1:9/0?password=*** does not answer:"
    ), results[0].stderr
    database_url = (
        "postgresql+psycopg://relay:hunter2user@127.0.0.1:9/relay"
        "?connect_timeout=2&sslpassword=hunter2ssl&password=hunter2query"
    )
    env = relay_env(make_settings(), RELAY_DATABASE_URL=database_url)
    results += [
        run_relay(env, "status"),
        run_relay(env, "health", "--no-workers"),
        run_relay(env, "db", "upgrade"),
    ]
    assert results[2].stderr.startswith(
        "error: the outbox database at postgresql+psycopg://relay:***@127.0.0.1:9/relay"
        "?connect_timeout=2&sslpassword=***&password=*** does not answer: OperationalError"
    ), results[2].stderr
    assert [r.returncode for r in results] == [2, 1, 2, 1, 1]
    for result in results:
        output = result.stdout + result.stderr
        for secret in ("hunter2user", "hunter2query", "hunter2ssl", *SECRETS):
            assert secret not in output, (secret, output)
        assert "Traceback" not in output


# -- 4. Redis scripts declare their keys ----------------------------------------------------

_CALL = re.compile(r"redis\.p?call\(\s*'(\w+)'\s*(?:,\s*([^,)]+))?")
_KEYLESS = {"TIME"}


def test_every_script_touches_only_declared_keys() -> None:
    """Redis Cluster routes a script by KEYS: a key built inside it may live on another node."""
    scripts = sorted(
        (
            p
            for part in ("relay.queue", "relay.limiter", "relay.worker")
            for p in files(part).joinpath("lua").iterdir()
            if p.name.endswith(".lua")
        ),
        key=lambda p: p.name,
    )
    assert len(scripts) == 12
    for script in scripts:
        for command, first in _CALL.findall(script.read_text()):
            if command.upper() in _KEYLESS:
                continue
            assert first.strip().startswith("KEYS["), f"{script.name}: {command} {first}"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    connection = redis.Redis.from_url(redis_url)
    yield connection
    connection.close()


def items(count: int, start: int = 0) -> list[bytes]:
    return [
        json.dumps({"v": 1, "d": "servoki", "id": f"e{i}", "t": time.time(), "p": {}}).encode()
        for i in range(start, start + count)
    ]


def test_reaper_returns_a_dead_consumers_batch_in_order_and_leaves_the_living(
    client: redis.Redis,
) -> None:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    known = frozenset({"servoki"})
    client.rpush(keys.queue, *items(7))
    dead = Queue(client, keys, heartbeat_seconds=0.2, known_destinations=known)
    alive = Queue(client, keys, heartbeat_seconds=30, known_destinations=known)
    assert [e.event_id for e in dead.take(3).events] == ["e0", "e1", "e2"]
    assert [e.event_id for e in alive.take(2).events] == ["e3", "e4"]
    time.sleep(0.3)  # the dead consumer's heartbeat expires
    assert alive.reap() == 3
    queued = [json.loads(i)["id"] for i in client.lrange(keys.queue, 0, -1)]
    assert queued == ["e0", "e1", "e2", "e5", "e6"]  # back at the head, in their order
    assert [json.loads(i)["id"] for i in client.lrange(alive.processing, 0, -1)] == ["e3", "e4"]
    assert not client.exists(dead.processing)
    assert client.smembers(keys.consumers) == {alive.consumer.encode()}
    assert alive.reap() == 0


def test_reaper_leaves_a_consumer_that_beat_again(client: redis.Redis) -> None:
    """The heartbeat is checked again inside the script: a consumer that beat between the
    reaper's look and its move keeps its batch."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    client.rpush(keys.queue, *items(2))
    slow = Queue(client, keys, heartbeat_seconds=0.2, known_destinations=frozenset({"servoki"}))
    slow.take(2)
    time.sleep(0.3)
    reaper = Queue(client, keys)
    dead = reaper.dead_consumers()
    assert dead == [slow.consumer.encode()]
    slow.beat(30)  # alive again before the move
    assert reaper.return_batch(dead[0]) is None
    assert client.llen(slow.processing) == 2 and client.llen(keys.queue) == 0
    assert client.sismember(keys.consumers, slow.consumer)
