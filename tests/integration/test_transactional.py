"""The transactional enqueue (issue 12, point 1): the outbox row inside the caller's transaction.

``relay.enqueue_in`` (a SQLAlchemy Session or Connection) and Django's
``enqueue_in_transaction`` (an ``atomic()`` block, ``using=``) on SQLite and PostgreSQL: the
application's own engine (plain ``create_engine``, not the relay's) on the relay's outbox
database; real Redis, the sandbox and a worker's flush (or pump, for the pickup latency).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.db import transaction as django_transaction
from sqlalchemy import Connection, Engine, create_engine, func, select, text
from sqlalchemy.orm import Session

import relay
import relay.testing
from relay.contrib.django import enqueue_in_transaction
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import ConfigError
from relay.keys import Keys
from relay.outbox.schema import outbox
from relay.queue import wire
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.integration.test_django import (  # the Django project and its outbox alias
    django_project,  # noqa: F401
    outbox_alias,  # noqa: F401
    relay_dict,
)
from tests.support.pipeline import delivered_ids, flush


class Boom(Exception):
    """The application's own failure after it enqueued: its transaction rolls back."""


def purchase(currency: str = "EUR") -> dict[str, Any]:
    return {"event_type": "purchase", "value": 49.9, "currency": currency}


@pytest.fixture
def settings(make_settings: Callable[..., Settings], db_url: str) -> Settings:
    """This test's relay; its outbox database (SQLite or PostgreSQL) is the application's."""
    return make_settings(database_url=db_url)


@pytest.fixture
def enqueuer(settings: Settings) -> Iterator[Enqueuer]:
    """The process's enqueuer, on this test's relay."""
    made = relay.configure(settings)
    yield made
    made.close()


@pytest.fixture
def app_engine(settings: Settings) -> Iterator[Engine]:
    """The application's engine on the outbox database: SQLAlchemy's defaults, not the relay's."""
    engine = create_engine(settings.resolved_database_url)
    yield engine
    engine.dispose()


def rows(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        found = conn.execute(select(outbox.c.destination, outbox.c.event_id)).all()
    return sorted((row[0], row[1]) for row in found)


def queued(settings: Settings, client: redis.Redis) -> list[bytes]:
    return list(client.lrange(Keys(settings.namespace).queue, 0, -1))


# -- commit, rollback, savepoints --------------------------------------------------------------


def test_a_session_commit_writes_one_row_wakes_the_workers_and_a_worker_delivers_it(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
) -> None:
    with Session(app_engine) as session, session.begin():
        event_id = relay.enqueue_in(session, "servoki", purchase(), event_id="order_1")
        assert event_id == "order_1"
        stamped = relay.enqueue_in(session, "servoki", purchase())
        # Inside the transaction: no row anyone else can see, nothing in Redis.
        assert rows(app_engine) == [] and queued(settings, redis_client) == []
    assert rows(app_engine) == sorted([("servoki", "order_1"), ("servoki", stamped)])
    assert queued(settings, redis_client) == [wire.WAKE]  # no event: only a wake-up
    report = flush(settings)
    assert report.drained.taken == 0 and report.drained.inserted == 0  # the wake-up is no event
    assert report.dispatched.delivered == 2 and report.exit_code == 0
    assert delivered_ids(sandbox) == sorted(["order_1", stamped])
    assert queued(settings, redis_client) == []
    assert flush(settings).dispatched.claimed == 0  # once


def test_a_connection_commit_is_delivered_once(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
) -> None:
    with app_engine.begin() as conn:
        relay.enqueue_in(conn, "servoki", purchase(), event_id="core_1")
        assert queued(settings, redis_client) == []
    with app_engine.connect() as conn:  # commit() and go on: the connection's own transaction
        relay.enqueue_in(conn, "servoki", purchase(), event_id="core_2")
        conn.commit()
        relay.enqueue_in(conn, "servoki", purchase(), event_id="core_never")
        conn.rollback()
    assert rows(app_engine) == [("servoki", "core_1"), ("servoki", "core_2")]
    assert flush(settings).dispatched.delivered == 2
    assert delivered_ids(sandbox) == ["core_1", "core_2"]


def test_a_rollback_writes_nothing_ever(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
) -> None:
    with pytest.raises(Boom), Session(app_engine) as session, session.begin():
        relay.enqueue_in(session, "servoki", purchase(), event_id="session_rolled_back")
        raise Boom
    with pytest.raises(Boom), app_engine.begin() as conn:
        relay.enqueue_in(conn, "servoki", purchase(), event_id="connection_rolled_back")
        raise Boom
    assert queued(settings, redis_client) == []  # not even a wake-up
    report = flush(settings)
    assert report.dispatched.claimed == 0 and report.pending_left == 0
    assert rows(app_engine) == [] and sandbox.events("servoki") == []


def test_a_savepoint_rolled_back_takes_its_event_with_it(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
) -> None:
    with Session(app_engine) as session, session.begin():
        relay.enqueue_in(session, "servoki", purchase(), event_id="s_kept")
        with pytest.raises(Boom), session.begin_nested():
            relay.enqueue_in(session, "servoki", purchase(), event_id="s_savepoint_gone")
            raise Boom
        with session.begin_nested():
            relay.enqueue_in(session, "servoki", purchase(), event_id="s_savepoint_kept")
    with app_engine.begin() as conn:
        relay.enqueue_in(conn, "servoki", purchase(), event_id="c_kept")
        with pytest.raises(Boom), conn.begin_nested():
            relay.enqueue_in(conn, "servoki", purchase(), event_id="c_savepoint_gone")
            raise Boom
    kept = ["c_kept", "s_kept", "s_savepoint_kept"]
    assert [event_id for _, event_id in rows(app_engine)] == kept
    assert flush(settings).dispatched.delivered == 3
    assert delivered_ids(sandbox) == kept


# -- dedup with the Redis path -------------------------------------------------------------------


def test_the_same_id_from_both_paths_is_one_row_and_one_delivery(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
) -> None:
    relay.enqueue("servoki", purchase(), event_id="queued_first")
    with Session(app_engine) as session, session.begin():
        relay.enqueue_in(session, "servoki", purchase(), event_id="queued_first")
        relay.enqueue_in(session, "servoki", purchase(), event_id="transactional_first")
        relay.enqueue_in(session, "servoki", purchase(), event_id="transactional_first")
    relay.enqueue("servoki", purchase(), event_id="transactional_first")
    report = flush(settings)
    assert report.drained.taken == 2 and report.drained.inserted == 0  # both were in the outbox
    assert report.dispatched.delivered == 2
    assert rows(app_engine) == [("servoki", "queued_first"), ("servoki", "transactional_first")]
    assert delivered_ids(sandbox) == ["queued_first", "transactional_first"]


# -- errors at the call --------------------------------------------------------------------------


def test_an_invalid_event_fails_at_the_call_naming_the_field_and_the_transaction_goes_on(
    settings: Settings, enqueuer: Enqueuer, app_engine: Engine
) -> None:
    with Session(app_engine) as session, session.begin():
        with pytest.raises(relay.InvalidEvent) as raised:
            relay.enqueue_in(session, "servoki", purchase(currency="euro"))
        relay.enqueue_in(session, "servoki", purchase(), event_id="valid")
    assert str(raised.value).startswith(
        "servoki.currency must be a 3-letter ISO 4217 code such as \"EUR\", got 'euro'"
    )
    assert rows(app_engine) == [("servoki", "valid")]
    with pytest.raises(TypeError, match="a SQLAlchemy Session or Connection, not Engine"):
        relay.enqueue_in(app_engine, "servoki", purchase())  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def database_without_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.fresh(migrated=False))


def test_an_application_database_without_the_outbox_is_a_config_error(
    enqueuer: Enqueuer, database_without_outbox: str
) -> None:
    engine = create_engine(database_without_outbox)
    try:
        with Session(engine) as session, session.begin():
            session.execute(text("CREATE TABLE orders (id INTEGER PRIMARY KEY)"))
            with pytest.raises(ConfigError) as raised:
                relay.enqueue_in(session, "servoki", purchase())
            # The check wrote nothing and broke nothing: the application's transaction goes on.
            session.execute(text("INSERT INTO orders (id) VALUES (1)"))
        message = str(raised.value)
        assert "is not at the current schema: run `relay db upgrade`" in message
        assert "must be the relay's outbox (RELAY_DATABASE_URL" in message
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(text("orders"))).scalar() == 1
    finally:
        engine.dispose()


# -- pickup latency: a wake-up, not the next poll ----------------------------------------------


@pytest.mark.slow
def test_an_idle_worker_picks_a_committed_row_up_at_once(
    settings: Settings,
    enqueuer: Enqueuer,
    app_engine: Engine,
    sandbox: SandboxProcess,
) -> None:
    worker = Worker(settings)
    pump = threading.Thread(target=worker.pump, args=(30.0,), kwargs={"idle_wait": 2.0})
    pump.start()
    waits: list[float] = []
    try:
        time.sleep(0.3)  # the worker is idle, blocked on the queue
        for n in range(6):
            started = time.monotonic()
            if n % 2:
                with app_engine.begin() as conn:
                    relay.enqueue_in(conn, "servoki", purchase(), event_id=f"idle_{n}")
            else:
                with Session(app_engine) as session, session.begin():
                    relay.enqueue_in(session, "servoki", purchase(), event_id=f"idle_{n}")
            while len(sandbox.events("servoki")) <= n:
                assert time.monotonic() - started < 5
                time.sleep(0.002)
            waits.append(time.monotonic() - started)
            time.sleep(0.2)
    finally:
        worker.stopping.set()
        pump.join()
        worker.close()
    # Far under the idle wait (2 s): each row was claimed on its wake-up, not at a poll.
    assert max(waits) < 0.5, waits


# -- relay.testing -------------------------------------------------------------------------------


def test_relay_testing_captures_on_commit_and_never_after_a_rollback(tmp_path: Path) -> None:
    # A user's test database: no outbox, no Redis; the capture writes nothing.
    engine = create_engine(f"sqlite:///{tmp_path / 'users_tests.db'}")
    try:
        with relay.testing.capture() as events:
            with Session(engine) as session, session.begin():
                relay.enqueue_in(session, "servoki", purchase(), event_id="committed")
                with pytest.raises(Boom), session.begin_nested():
                    relay.enqueue_in(session, "servoki", purchase(), event_id="savepoint")
                    raise Boom
                assert events.ids == []  # not before the commit
            assert events.ids == ["committed"]
            with pytest.raises(Boom), Session(engine) as session, session.begin():
                relay.enqueue_in(session, "servoki", purchase(), event_id="session_rollback")
                raise Boom
            with pytest.raises(Boom), engine.begin() as conn:
                relay.enqueue_in(conn, "servoki", purchase(), event_id="connection_rollback")
                raise Boom
            with engine.begin() as conn:
                relay.enqueue_in(conn, "servoki", purchase(), event_id="connection_commit")
            with pytest.raises(relay.InvalidEvent):
                relay.enqueue_in(engine.connect(), "servoki", purchase(currency="euro"))
            assert events.ids == ["committed", "connection_commit"]
            assert events.by_id("committed").payload["currency"] == "EUR"
        with engine.connect() as conn:
            assert not _has_table(conn, "relay_outbox")
    finally:
        engine.dispose()


def _has_table(conn: Connection, name: str) -> bool:
    return bool(conn.dialect.has_table(conn, name))


# -- Django --------------------------------------------------------------------------------------


@pytest.fixture
def django_relay(outbox_alias: str, settings: Settings) -> Iterator[str]:  # noqa: F811
    from django.test import override_settings

    with override_settings(RELAY=relay_dict(settings)):
        yield outbox_alias


def test_django_commit_writes_the_row_with_using_and_a_worker_delivers(
    settings: Settings,
    django_relay: str,
    app_engine: Engine,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
) -> None:
    with django_transaction.atomic(using=django_relay):
        enqueue_in_transaction("servoki", purchase(), event_id="dj_1", using=django_relay)
        try:
            with django_transaction.atomic(using=django_relay):
                enqueue_in_transaction("servoki", purchase(), event_id="dj_sp", using=django_relay)
                raise Boom
        except Boom:
            pass
        assert rows(app_engine) == [] and queued(settings, redis_client) == []
    assert rows(app_engine) == [("servoki", "dj_1")]
    assert queued(settings, redis_client) == [wire.WAKE]
    with pytest.raises(Boom), django_transaction.atomic(using=django_relay):
        enqueue_in_transaction("servoki", purchase(), event_id="dj_rolled_back", using=django_relay)
        raise Boom
    relay.enqueue("servoki", purchase(), event_id="dj_1")  # the same id through Redis
    report = flush(settings)
    assert report.dispatched.delivered == 1 and report.pending_left == 0
    assert rows(app_engine) == [("servoki", "dj_1")]
    assert delivered_ids(sandbox) == ["dj_1"]


def test_django_without_the_outbox_in_that_database_is_a_config_error(
    django_relay: str, app_engine: Engine
) -> None:
    with pytest.raises(ConfigError) as raised, django_transaction.atomic(using="other"):
        enqueue_in_transaction("servoki", purchase(), using="other")
    assert str(raised.value).startswith(
        "DATABASES['other'] holds no relay outbox at the current schema: run `relay db upgrade`"
    )
    with pytest.raises(relay.InvalidEvent, match=r"servoki\.currency"):
        enqueue_in_transaction("servoki", purchase(currency="euro"), using=django_relay)
    assert rows(app_engine) == []
