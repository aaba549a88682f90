"""One redaction everywhere: the destination's, for keys (a DataLook secret with underscores
included), and one masking rule for the passwords in Redis and database URLs, in error texts
too."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.destinations import build_destinations
from relay.enqueue import Enqueuer
from relay.errors import RelayUnavailable
from relay.ops.admin import Admin
from relay.settings import Settings
from relay.urls import describe_error, safe_url, scrub
from relay.urls import safe_url as light_safe_url
from tests.support.services import SERVOKI_KEY, UNDERSCORE_KEY, UNDERSCORE_SECRET


def test_a_datalook_secret_with_underscores_is_redacted_everywhere(clean_env: None) -> None:
    settings = Settings(datalook_api_key=UNDERSCORE_KEY, datalook_url="https://dl.example.com")
    [destination] = build_destinations(settings.destination_configs()).values()
    assert set(destination.secrets()) == {UNDERSCORE_KEY, UNDERSCORE_SECRET}
    text = f"Bearer {UNDERSCORE_KEY}; secret={UNDERSCORE_SECRET}; key id k7prod"
    redacted = destination.redact(text)
    assert redacted == "Bearer ***; secret=***; key id k7prod"  # the key id is not secret
    admin = Admin(settings)
    assert admin.redact(text) == redacted  # the CLI uses the same redaction


def test_a_key_is_redacted_whatever_its_length() -> None:
    """Only the settings check keys: a destination built around them still hides a short one."""
    from pydantic import SecretStr

    from relay.destinations import DataLook
    from relay.settings import DestinationConfig

    config = DestinationConfig("x", "datalook", "https://dl.example", SecretStr("xk9"))
    assert DataLook(config).redact("sent xk9 to k") == "sent *** to k"


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
