"""enqueue()'s outbox fallback writes only where a relay reads: with Redis unreachable and no
outbox at the place it would write, it refuses with a clear error and creates nothing (no
home, no database file). Nothing here opens a database; the fallback's writes, budgets and
schema check are in tests/integration/test_fallback.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from relay.enqueue import Enqueuer
from tests.support.fallback import NO_REDIS, unavailable


def test_embedded_defaults_without_a_relay_write_nothing(
    clean_env: None,
    configured: Callable[..., Enqueuer],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """enqueue() from a directory where no relay runs: a clear error, and no fresh outbox."""
    elsewhere = tmp_path / "web-app"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    configured()  # RELAY_HOME, RELAY_REDIS_URL and RELAY_DATABASE_URL all unset
    message = unavailable()
    home = elsewhere / ".relay"
    assert f"Redis at unix://{home}/redis.sock failed" in message
    assert f"no outbox at {home}/outbox.db" in message
    assert "nothing was written" in message
    assert (
        f"RELAY_HOME is unset: the relay's home is {home}, relative to the working directory"
        in (message)
    )
    assert "set RELAY_HOME to the relay's home as an absolute path" in message
    assert "RELAY_REDIS_URL" in message and "RELAY_DATABASE_URL" in message
    assert list(elsewhere.iterdir()) == []  # no .relay, no outbox.db

    # A relative RELAY_HOME is named as the absolute path it resolved to.
    monkeypatch.setenv("RELAY_HOME", "relay-home")
    configured()
    message = unavailable()
    assert f"RELAY_HOME is 'relay-home': the relay's home is {elsewhere / 'relay-home'}" in message
    assert list(elsewhere.iterdir()) == []


def test_an_existing_home_without_an_outbox_stays_untouched(
    clean_env: None, configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    configured(home=home)
    message = unavailable()
    assert f"no outbox at {home}/outbox.db" in message
    assert "RELAY_HOME is" not in message  # absolute: nothing to warn about
    assert list(home.iterdir()) == []


def test_a_configured_sqlite_outbox_that_does_not_exist_is_not_created(
    configured: Callable[..., Enqueuer], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'outbox.db'}"
    configured(home=tmp_path / "home", redis_url=NO_REDIS, database_url=url)
    message = unavailable()
    assert f"there is no outbox at {tmp_path / 'db' / 'outbox.db'} (RELAY_DATABASE_URL)" in message
    assert "create it with `relay db upgrade`" in message
    assert list(tmp_path.iterdir()) == []
