"""Leases and due times are read on the database's clock, never a worker's.

A host whose wall clock is off must neither claim rows another worker still holds nor make
rows wait (or come due) early; operator commands on a skewed host see the same times.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select, text

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.keys import Keys
from relay.outbox.engine import make_engine
from relay.outbox.queries import make_due
from relay.outbox.schema import db_now, outbox
from relay.outbox.store import Outbox, utcnow
from relay.queue.wire import NewEvent
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.faults import Workload, libfaketime, skewed_clock, start_pump, stop, wait_for
from tests.support.services import ROOT, Postgres, relay_env

needs_faketime = pytest.mark.skipif(
    libfaketime() is None, reason="needs Debian's faketime package (scripts/test installs it)"
)

LATENCY = 1.0
"""Seconds the sandbox holds every request: each send is in flight that long."""


@pytest.fixture
def box(db_url: str) -> Iterator[Outbox]:
    engine = make_engine(db_url)
    yield Outbox(engine)
    engine.dispose()


def events(n: int, prefix: str = "e") -> list[NewEvent]:
    return [NewEvent("servoki", f"{prefix}{i}", {"n": i}, utcnow()) for i in range(n)]


def database_now(box: Outbox) -> Any:
    with box.engine.connect() as conn:
        return conn.execute(select(db_now(box.dialect))).scalar_one()


# -- the outbox on both databases -------------------------------------------------------


def test_due_times_and_leases_count_from_the_databases_now(box: Outbox) -> None:
    box.insert(events(3))
    assert -5 < box.seconds_until_due(["servoki"]) <= 0
    a, b, c = box.claim_due(3, lease_seconds=60, destinations=["servoki"])
    assert a.claimed_at is not None and abs((a.claimed_at - database_now(box)).total_seconds()) < 5
    assert 59 < box.seconds_until_due(["servoki"]) <= 60
    box.schedule_retry(a, 503, "unavailable", delay=30)
    box.release(b, delay=12.5)
    assert 12 < box.seconds_until_due(["servoki"]) <= 12.5
    box.release(c, delay=0)
    [again] = box.claim_due(3, lease_seconds=60, destinations=["servoki"])
    assert again.event_id == "e2"
    assert box.seconds_until_due(["datalook"]) is None
    assert box.seconds_until_due([]) is None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # PostgreSQL stores typed times
def test_sqlite_stores_the_databases_times_as_sqlalchemy_does(box: Outbox) -> None:
    """On SQLite the times are text: a time the database wrote must compare with one Python
    wrote, so both have the same shape (microseconds, six digits)."""
    assert box.dialect == "sqlite"
    box.insert(events(2))
    box.claim_due(1, lease_seconds=0.25, destinations=["servoki"])
    with box.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT next_attempt_at, created_at, updated_at FROM relay_outbox")
        ).all()
    for row in stored:
        for value in row:
            assert len(value) == 26 and value[10] == " " and value[19] == ".", value
    time.sleep(0.3)  # millisecond precision: a lease of 0.25 s has ended, not a whole second
    assert [c.event_id for c in box.claim_due(5, 60, ["servoki"])] == ["e0", "e1"]


def test_resume_makes_rows_due_on_the_databases_clock(box: Outbox) -> None:
    box.insert(events(2))
    held, waiting = box.claim_due(2, lease_seconds=60, destinations=["servoki"])
    box.schedule_retry(waiting, 503, "unavailable", delay=300)
    assert make_due(box.engine, "servoki") == 1  # the row under a live lease stays held
    [claim] = box.claim_due(5, 60, ["servoki"])
    assert claim.event_id == waiting.event_id
    with box.engine.connect() as conn:
        due = dict(conn.execute(select(outbox.c.event_id, outbox.c.next_attempt_at)).all())
    assert due[held.event_id] > database_now(box)


def outbox_rows(settings: Settings) -> int:
    box = Outbox(make_engine(settings.resolved_database_url))
    try:
        return sum(sum(by_status.values()) for by_status in box.counts().values())
    finally:
        box.engine.dispose()


@pytest.mark.slow
@needs_faketime
def test_a_worker_whose_clock_runs_ahead_never_claims_a_held_row(
    make_settings: Callable[..., Settings],
    postgres: Postgres,
    sandbox: SandboxProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    """Two real workers on PostgreSQL, one on a host whose wall clock is 90 s ahead (past
    every lease the other takes), against slow answers: no event is in flight twice."""
    settings = make_settings(
        database_url=postgres.fresh(),
        lease_seconds=8.0,
        connect_timeout=0.5,
        read_timeout=3.0,
        send_concurrency=8,
        heartbeat_seconds=2.0,
    )
    sandbox.set_faults(latency_ms=LATENCY * 1000)
    work = Workload()
    enqueuer = Enqueuer(settings)
    normal = ahead = None
    try:
        work.enqueue(enqueuer, 30)
        # The normal worker drains the first batch (rows due on the true time) and claims it
        # all, a lease of 8 s on every row while it sends eight at a time.
        normal = start_pump(settings, 60, tmp_path / "normal.log", PUMP_LOG_LEVEL="INFO")
        assert wait_for(lambda: outbox_rows(settings) == 60, timeout=20)
        # The worker 90 s ahead joins, claiming as many rows as it sends at once: every lease
        # the normal worker holds has ended on its clock.
        ahead = start_pump(
            settings, 60, tmp_path / "ahead.log", PUMP_LOG_LEVEL="INFO",
            RELAY_DISPATCH_BATCH="8", **skewed_clock(90),
        )  # fmt: skip
        workers = Keys(settings.namespace).workers
        assert wait_for(lambda: redis_client.hlen(workers) == 2, timeout=20)
        work.enqueue(enqueuer, 30)  # a second batch, for both workers to share
        assert wait_for(lambda: work.delivered(sandbox), timeout=45), sandbox.stats()
    finally:
        enqueuer.close()
        codes = [stop(proc) if proc else None for proc in (normal, ahead)]
    logs = [(tmp_path / f"{name}.log").read_text() for name in ("normal", "ahead")]
    assert codes == [0, 0] and "Traceback" not in "".join(logs), "".join(logs)[-3000:]
    sent = [log.count("INFO:relay.delivery:delivered") for log in logs]
    assert all(sent), f"both workers must deliver (normal, ahead): {sent}"
    stats = sandbox.stats()
    in_flight_twice = stats["datalook"]["overlapping"] + stats["servoki"]["overlapping"]
    servoki_twice = stats["servoki"]["duplicates"]
    doubles = work.check(sandbox, settings)
    print(
        f"clock skew +90 s: {sum(doubles.values())} DataLook double counts, "
        f"{in_flight_twice} requests while another for the same event was open, "
        f"{servoki_twice} Servoki resends; delivered by the normal / the skewed worker: {sent}"
    )
    assert (sum(doubles.values()), in_flight_twice, servoki_twice) == (0, 0, 0)


@needs_faketime
def test_operator_commands_on_a_host_a_day_ahead(
    make_settings: Callable[..., Settings], postgres: Postgres
) -> None:
    """`relay status`, `outbox prune`, `discard` and `retry` on a host whose clock is a day
    ahead: ages, cutoffs, leases and due times are the database's."""
    settings = make_settings(database_url=postgres.fresh())
    box = Outbox(make_engine(settings.resolved_database_url))
    box.insert(events(4))
    done, dead, gone, held = box.claim_due(4, lease_seconds=60, destinations=["servoki"])
    box.mark_delivered(done, 202)
    box.mark_dead(dead, 404, "unknown site")
    box.mark_dead(gone, 404, "unknown site")
    env = relay_env(settings, **skewed_clock(86400))

    def relay(*args: str) -> Any:
        result = subprocess.run(
            [sys.executable, "-m", "relay.cli", *args, "--json"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    try:
        age = relay("status")["destinations"]["servoki"]["oldest_pending_age"]
        assert 0 <= age < 60  # not a day
        relay("outbox", "prune", "--older-than", "1h", "--yes")
        relay("outbox", "discard", held.event_id, gone.event_id, "--yes")
        relay("outbox", "retry", dead.event_id, "--yes")
        with box.engine.connect() as conn:
            status = dict(conn.execute(select(outbox.c.event_id, outbox.c.status)).all())
        # Delivered a moment ago: kept. Under a live lease: not discarded. Retried: due now,
        # not in a day.
        assert status == {
            done.event_id: "delivered", dead.event_id: "pending",
            gone.event_id: "discarded", held.event_id: "pending",
        }  # fmt: skip
        assert [c.event_id for c in box.claim_due(5, 60, ["servoki"])] == [dead.event_id]
    finally:
        box.engine.dispose()


@needs_faketime
def test_flush_on_a_host_behind_waits_for_a_retry_due_soon(
    make_settings: Callable[..., Settings], postgres: Postgres, sandbox: SandboxProcess
) -> None:
    """`relay flush` on a host 90 s behind: a retry due in 2 s is 2 s away, not 92 (past
    --max-wait, which would end the flush with the event left pending)."""
    settings = make_settings(database_url=postgres.fresh())
    enqueuer = Enqueuer(settings)
    worker = Worker(settings)
    try:
        enqueuer.push([enqueuer.encode("servoki", {"event_type": "signup"})[1]])
        assert worker.drain().inserted == 1
        [claim] = worker.outbox.claim_due(1, 60, ["servoki"])
        worker.outbox.schedule_retry(claim, 503, "unavailable", delay=2)
    finally:
        worker.close()
        enqueuer.close()
    result = subprocess.run(
        [sys.executable, "-m", "relay.cli", "flush", "--max-wait", "30"],
        env=relay_env(settings, **skewed_clock(-90)),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert sandbox.stats()["servoki"]["accepted"] == 1
