"""Group commit: a round's outcomes are written in one transaction and still keep every
per-row promise, on both databases: a row whose lease was lost is not overwritten, an answer
the database refuses stays with its row, a write failing while the database restarts is held
and written once it is back (never past the lease), and metrics count only what was written."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import event, select, update
from sqlalchemy.exc import OperationalError

from relay.destinations.outcome import Outcome, Verdict
from relay.outbox.schema import attempts, outbox
from relay.outbox.store import Claim
from relay.settings import Settings
from relay.worker.delivery import UNSTORABLE, Round
from relay.worker.group_commit import GroupCommit
from relay.worker.loop import Worker
from tests.support.pipeline import enqueue, purchases, rows
from tests.support.services import Postgres


@pytest.fixture
def worker(make_settings: Callable[..., Settings], db_url: str) -> Iterator[Worker]:
    made = Worker(make_settings(lease_seconds=30.0))
    yield made
    made.close()


def claimed(worker: Worker, n: int) -> list[Claim]:
    """``n`` Servoki rows drained into the outbox and claimed by ``worker``."""
    enqueue(worker.settings, "servoki", purchases(n))
    worker.drain()
    claims = worker.outbox.claim_due(n, 30.0, ["servoki"])
    assert len(claims) == n
    return claims


def group(worker: Worker, round_: Round | None = None) -> GroupCommit:
    """The group commit the dispatcher gives a round."""
    return worker.dispatcher._group_commit(round_ or Round())


def history(worker: Worker) -> dict[int, list[tuple[str, int | None, str | None]]]:
    with worker.engine.connect() as conn:
        found: dict[int, list[tuple[str, int | None, str | None]]] = {}
        for row in conn.execute(select(attempts).order_by(attempts.c.id)):
            found.setdefault(row.outbox_id, []).append((row.verdict, row.status, row.detail))
    return found


def delivered_count() -> float:
    return (
        REGISTRY.get_sample_value("relay_events_delivered_total", {"destination": "servoki"}) or 0
    )


def test_a_round_writes_its_outcomes_in_one_transaction(worker: Worker) -> None:
    """Forty events, one flush: every row delivered with its history, in a handful of
    transactions instead of one per event."""
    ids = enqueue(worker.settings, "servoki", purchases(40))
    commits = [0]
    event.listen(worker.engine, "commit", lambda *_: commits.__setitem__(0, commits[0] + 1))
    report = worker.flush(max_wait=1)
    found = rows(worker)
    assert report.dispatched.delivered == 40 and report.exit_code == 0
    assert {found[i].status for i in ids} == {"delivered"}
    assert all(found[i].delivered_at == found[i].updated_at for i in ids)
    assert sorted(len(h) for h in history(worker).values()) == [1] * 40
    # One drain, one claim, an outcome write every 0.2 s at most: far below one per event.
    print(f"commits for 40 events: {commits[0]}")
    assert commits[0] <= 15, commits[0]


def test_a_lost_lease_inside_a_batch_leaves_that_row_alone(worker: Worker) -> None:
    first, lost, third = claimed(worker, 3)
    # Another worker claimed the middle row after this claim's lease ended.
    with worker.engine.begin() as conn:
        conn.execute(update(outbox).where(outbox.c.id == lost.id).values(lease_token="newer"))
    before = delivered_count()
    commit = group(worker)
    commit.add(
        first, Outcome.delivered(202), worker.dispatcher._finish_for(first, Outcome.delivered(202))
    )
    commit.add(
        lost, Outcome.delivered(202), worker.dispatcher._finish_for(lost, Outcome.delivered(202))
    )
    retry = Outcome.retry(503, "unavailable")
    commit.add(third, retry, worker.dispatcher._finish_for(third, retry))
    commit.write()
    assert commit.written == {first.id: True, lost.id: False, third.id: True}
    found = {row.id: row for row in rows(worker).values()}
    assert found[first.id].status == "delivered" and found[first.id].lease_token is None
    assert found[lost.id].status == "pending" and found[lost.id].lease_token == "newer"
    assert found[lost.id].last_status is None and found[lost.id].delivered_at is None
    assert found[third.id].status == "pending" and found[third.id].last_status == 503
    # Scheduled from the write's time; full jitter may draw a delay of 0 (milliseconds on SQLite).
    assert found[third.id].next_attempt_at >= found[third.id].updated_at
    assert found[third.id].lease_token is None
    assert history(worker) == {
        first.id: [("delivered", 202, None)],
        third.id: [("retry", 503, "unavailable")],
    }
    assert delivered_count() - before == 1  # the lost one is not counted


def test_an_answer_the_database_refuses_stays_with_its_row(
    worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    first, poison, third = claimed(worker, 3)
    commit = group(worker)
    raw = Outcome(Verdict.DEAD, 400, "no \x00 and no \ud800 either")  # not sanitized
    dead = Outcome.dead(404, "unknown site")
    for claim, outcome in ((first, Outcome.delivered(202)), (poison, raw), (third, dead)):
        commit.add(claim, outcome, worker.dispatcher._finish_for(claim, outcome))
    commit.write()
    assert commit.written == {first.id: True, poison.id: True, third.id: True}
    found = {row.id: row for row in rows(worker).values()}
    assert found[first.id].status == "delivered"
    assert found[poison.id].status == "dead" and found[poison.id].last_error == UNSTORABLE
    assert found[third.id].status == "dead" and found[third.id].last_error == "unknown site"
    assert history(worker)[third.id] == [("dead", 404, "unknown site")]
    assert "writing them one by one" in caplog.text


def test_a_batch_is_held_while_the_database_fails_then_written(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    claims = claimed(worker, 3)
    round_ = Round()
    commit = group(worker, round_)
    for claim in claims:
        commit.add(
            claim,
            Outcome.delivered(202),
            worker.dispatcher._finish_for(claim, Outcome.delivered(202)),
        )
    real = worker.outbox.finish_many
    failures = [2]
    troubled: list[bool] = []

    def restarting(finishes: object) -> object:
        if failures[0]:
            failures[0] -= 1
            troubled.append(round_.trouble.is_set())
            raise OperationalError("UPDATE relay_outbox", {}, Exception("the database restarts"))
        troubled.append(round_.trouble.is_set())
        return real(finishes)  # type: ignore[arg-type]

    monkeypatch.setattr(worker.outbox, "finish_many", restarting)
    commit.write()
    # Held (the round sends nothing meanwhile), then written, all of it.
    assert troubled == [False, True, True] and not round_.trouble.is_set()
    assert commit.written == {claim.id: True for claim in claims}
    assert {row.status for row in rows(worker).values()} == {"delivered"}


def test_a_held_batch_gives_up_before_its_earliest_lease_ends(
    worker: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Holding a batch ends before the earliest lease in it does, whatever the patience."""
    early, late = claimed(worker, 2)
    early = Claim(**{**early.__dict__, "lease_deadline": time.monotonic() + 2.0})
    worker.dispatcher.record_patience = 30.0
    commit = group(worker)
    for claim in (early, late):
        commit.add(
            claim,
            Outcome.delivered(202),
            worker.dispatcher._finish_for(claim, Outcome.delivered(202)),
        )

    def down(finishes: object) -> object:
        raise OperationalError("UPDATE relay_outbox", {}, Exception("the database is down"))

    monkeypatch.setattr(worker.outbox, "finish_many", down)
    started = time.monotonic()
    with pytest.raises(OperationalError):
        commit.write()
    assert time.monotonic() - started < 2.0  # inside the earliest lease, not the 30 s patience
    assert commit.written == {}


def test_a_batch_written_across_a_real_postgresql_restart(
    make_settings: Callable[..., Settings], postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL stopped while a round's outcomes wait, started again a second later: the
    batch is held, then written, every row once."""
    from pgserver._commands import pg_ctl

    worker = Worker(make_settings(database_url=postgres.fresh(), lease_seconds=30.0))
    try:
        claims = claimed(worker, 5)
        commit = group(worker)
        for claim in claims:
            commit.add(
                claim,
                Outcome.delivered(202),
                worker.dispatcher._finish_for(claim, Outcome.delivered(202)),
            )
        user = postgres.server.system_user
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=postgres.directory, user=user)
        # Started again as pgserver starts it: its socket in the data directory, no TCP.
        options = ["-o", '-h ""', "-o", f"-k {postgres.directory}"]
        start = ["-w", *options, "-l", str(postgres.server.log), "start"]
        starter = threading.Timer(1.0, lambda: pg_ctl(start, pgdata=postgres.directory, user=user))
        starter.start()
        try:
            commit.write()
        finally:
            starter.join()
        assert "recording the outcomes of 5 events failed" in caplog.text  # it was held
        assert commit.written == {claim.id: True for claim in claims}
        assert {row.status for row in rows(worker).values()} == {"delivered"}
        assert sorted(len(h) for h in history(worker).values()) == [1] * 5
    finally:
        worker.close()
