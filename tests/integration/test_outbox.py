"""The outbox on both databases: dedup, leases, lease-guarded outcomes, concurrent claims,
the migration to 0003, and the operators' retry and discard racing workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from relay.dev.sandbox import SandboxProcess
from relay.outbox import queries as outbox_admin
from relay.outbox.engine import make_engine
from relay.outbox.queries import dead_reasons
from relay.outbox.schema import outbox
from relay.outbox.store import Outbox, utcnow
from relay.queue.wire import NewEvent
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.pipeline import enqueue, purchases, rows


@pytest.fixture
def box(db_url: str) -> Iterator[Outbox]:
    engine = make_engine(db_url)
    yield Outbox(engine)
    engine.dispose()


def events(n: int, destination: str = "servoki", prefix: str = "e") -> list[NewEvent]:
    return [NewEvent(destination, f"{prefix}{i}", {"n": i}, utcnow()) for i in range(n)]


def test_insert_skips_existing_and_in_batch_duplicates(box: Outbox) -> None:
    assert box.insert(events(5)) == 5
    assert box.insert(events(7) + events(2)) == 2
    assert box.insert(events(3, destination="datalook")) == 3  # same ids, other destination
    assert box.counts() == {"servoki": {"pending": 7}, "datalook": {"pending": 3}}


def test_claim_leases_rows_and_counts_the_attempt(box: Outbox) -> None:
    box.insert(events(3))
    first = box.claim_due(10, lease_seconds=60, destinations=["servoki"])
    assert [c.event_id for c in first] == ["e0", "e1", "e2"]
    assert all(c.attempts == 1 for c in first)
    assert box.claim_due(10, lease_seconds=60, destinations=["servoki"]) == []  # leased
    assert box.claim_due(10, lease_seconds=60, destinations=["datalook"]) == []


def test_expired_lease_is_claimable_and_the_late_result_is_dropped(box: Outbox) -> None:
    box.insert(events(1))
    [stale] = box.claim_due(1, lease_seconds=0.2, destinations=["servoki"])
    time.sleep(0.3)  # the first worker "hangs" past its lease
    [fresh] = box.claim_due(1, lease_seconds=60, destinations=["servoki"])
    assert fresh.attempts == 2 and fresh.lease_token != stale.lease_token
    assert box.mark_delivered(fresh, 202) is not None  # the database's time of the write
    assert box.mark_dead(stale, 400, "late") is False  # cannot overwrite the newer outcome
    assert box.schedule_retry(stale, 503, "late", 0) is False
    assert box.counts() == {"servoki": {"delivered": 1}}


def test_retry_and_release_make_the_row_due_again(box: Outbox) -> None:
    box.insert(events(2))
    a, b = box.claim_due(2, lease_seconds=60, destinations=["servoki"])
    assert box.schedule_retry(a, 503, "unavailable", delay=0)
    assert box.release(b, delay=0)
    again = {c.event_id: c.attempts for c in box.claim_due(5, 60, ["servoki"])}
    assert again == {"e0": 2, "e1": 1}  # a release refunds the attempt


def test_concurrent_claims_never_share_a_row(box: Outbox, db_url: str) -> None:
    box.insert(events(400))
    claimed: list[str] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def claimer() -> None:
        engine = make_engine(db_url)
        mine = Outbox(engine)
        try:
            while True:
                batch = mine.claim_due(7, 60, ["servoki"])
                if not batch:
                    return
                with lock:
                    claimed.extend(c.event_id for c in batch)
        except BaseException as exc:  # surfaced below: "database is locked" must not happen
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=claimer) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(claimed) == 400 and len(set(claimed)) == 400


def test_next_due_and_dead_reasons(box: Outbox) -> None:
    assert box.next_due_at(["servoki"]) is None
    box.insert(events(3))
    a, b, c = box.claim_due(3, 60, ["servoki"])
    box.mark_dead(a, 404, '{"error": "unknown site"}')
    box.mark_dead(b, None, "gave up after 25 attempts: timeout")
    box.schedule_retry(c, 503, "x", delay=30)
    due = box.next_due_at(["servoki"])
    assert due is not None and 25 < (due - utcnow()).total_seconds() <= 30
    reasons = dead_reasons(box.engine)
    assert reasons == {"servoki": {"HTTP 404": 1, "gave up after 25 attempts": 1}}


def test_migration_0003_keeps_rows_and_goes_both_ways(db_url: str) -> None:
    """An outbox at 0002 with rows in it upgrades in place (retried_at NULL) and back."""
    from alembic import command
    from sqlalchemy import inspect

    from relay.outbox.migrate import _config, is_current, upgrade
    from relay.outbox.schema import outbox

    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("relay_outbox")}

    engine = make_engine(db_url)
    config = _config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
    assert "retried_at" not in columns() and not is_current(engine)
    now = utcnow()
    with engine.begin() as conn:  # only 0002's columns named: the insert works at 0002
        conn.execute(
            outbox.insert().values(
                destination="servoki", event_id="old", payload={"n": 1}, status="dead",
                attempts=25, next_attempt_at=now, enqueued_at=now, created_at=now, updated_at=now,
            )
        )  # fmt: skip
    upgrade(engine)
    assert "retried_at" in columns() and is_current(engine)
    with engine.connect() as conn:
        [row] = conn.execute(select(outbox)).all()
    engine.dispose()
    assert row.event_id == "old" and row.attempts == 25 and row.retried_at is None


# -- operators: retry and discard, racing workers ----------------------------------------------


def test_an_operator_retry_gives_a_fresh_age_budget(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    """An event dead of old age (a long outage) gets its full attempts again when retried,
    not a single attempt that the age limit ends at once."""
    settings = make_settings(max_age_seconds=600, max_attempts=3)
    [event_id] = enqueue(settings, "servoki", purchases(1))
    worker = Worker(settings)
    try:
        worker.drain()
        with worker.engine.begin() as conn:
            conn.execute(update(outbox).values(enqueued_at=utcnow() - timedelta(hours=4)))
        sandbox.set_faults(outage=True)
        worker.flush(max_wait=5)
        row = rows(worker)[event_id]
        assert row.status == "dead" and row.attempts == 1
        assert "(RELAY_MAX_AGE_SECONDS=600)" in row.last_error

        assert outbox_admin.retry(worker.engine, ids=[row.id]) == 1
        worker.flush(max_wait=5)
        row = rows(worker)[event_id]
        assert row.status == "dead" and row.attempts == 3  # all its attempts, then dead
        assert "gave up after 3 attempts" in row.last_error
        assert row.retried_at is not None and row.retried_at > row.enqueued_at

        sandbox.clear_faults()
        assert outbox_admin.retry(worker.engine, ids=[row.id]) == 1
        assert worker.flush(max_wait=5).exit_code == 0
    finally:
        worker.close()


def test_discard_leaves_a_row_being_sent_alone(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    settings = make_settings()
    [sending, idle] = enqueue(settings, "servoki", purchases(2))
    worker = Worker(settings)
    try:
        worker.drain()
        [claim] = worker.outbox.claim_due(1, 60.0, ["servoki"])
        assert claim.event_id == sending
        ids = [row.id for row in rows(worker).values()]
        assert outbox_admin.discard(worker.engine, ids=ids) == 1
        found = rows(worker)
        assert found[sending].status == "pending" and found[idle].status == "discarded"
        # Its send finishes and is recorded as it happened.
        assert worker.dispatcher.deliver(claim)[1] is True
        assert rows(worker)[sending].status == "delivered"
        # A lease that ran out (its worker died) no longer protects the row.
        with worker.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.event_id == sending)
                # Ended a second ago: the database's now (milliseconds on SQLite) may still be
                # inside this very millisecond of the host's clock.
                .values(
                    status="pending",
                    lease_token="gone",
                    next_attempt_at=utcnow() - timedelta(seconds=1),
                )
            )
        assert outbox_admin.discard(worker.engine, ids=ids) == 1
    finally:
        worker.close()
