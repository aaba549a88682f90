"""Big outboxes (migration 0005): operator reads stay exact on their index paths, and a prune
of a large delivered history runs in short batches beside a delivering worker.

Counts, backlog ages, listings and the destinations are compared with the plain queries they
replace (a full scan and sort), over an outbox with every status in several destinations; on
both databases the counts are answered from the status index alone.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import Engine, func, select, text, update

from relay.outbox import queries
from relay.outbox.engine import make_engine
from relay.outbox.queries import Filters
from relay.outbox.schema import Status, outbox
from relay.outbox.store import Outbox, utcnow
from relay.queue.wire import NewEvent

STATUS_INDEX = "ix_relay_outbox_status_destination"


def events(destination: str, n: int, prefix: str = "e") -> list[NewEvent]:
    now = utcnow()
    return [NewEvent(destination, f"{prefix}{i}", {"n": i}, now) for i in range(n)]


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def mixed(engine: Engine) -> Engine:
    """Three destinations with rows in every status, made the way workers and operators
    make them, and updated_at spread so that listings have an order to keep."""
    box = Outbox(engine)
    for destination, n in (("servoki", 40), ("datalook", 25), ("tenant-7", 12)):
        box.insert(events(destination, n))
        claims = box.claim_due(n, 60, [destination])
        for i, claim in enumerate(claims):
            if i % 4 == 0:
                box.mark_delivered(claim, 202)
            elif i % 4 == 1:
                box.mark_dead(claim, 404, "HTTP 404: unknown site")
            elif i % 4 == 2:
                box.schedule_retry(claim, 503, "HTTP 503", 30)
            else:
                box.release(claim, 0)
    queries.discard(engine, filters=Filters([Status.DEAD.value], "datalook"))
    base = utcnow()
    with engine.begin() as conn:  # shuffled change times, a few of them shared (ties)
        for row_id in conn.execute(select(outbox.c.id)).scalars().all():
            moved = base - timedelta(seconds=(row_id * 7919) % 97)
            conn.execute(update(outbox).where(outbox.c.id == row_id).values(updated_at=moved))
    return engine


def plain_counts(engine: Engine) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        found = conn.execute(select(outbox.c.destination, outbox.c.status)).all()
    counts: dict[str, dict[str, int]] = {}
    for (destination, status), n in Counter(found).items():
        counts.setdefault(destination, {})[status] = n
    return counts


def test_counts_and_backlog_are_exact(mixed: Engine) -> None:
    expected = plain_counts(mixed)
    assert queries.status_counts(mixed) == expected
    assert Outbox(mixed).counts() == expected
    assert Outbox(mixed).pending() == sum(c.get("pending", 0) for c in expected.values())
    with mixed.connect() as conn:
        oldest = dict(
            conn.execute(
                select(outbox.c.destination, func.min(outbox.c.enqueued_at))
                .where(outbox.c.status == Status.PENDING.value)
                .group_by(outbox.c.destination)
            ).all()
        )
    backlog = queries.backlog(mixed)
    assert set(backlog) == set(expected)
    for destination, report in backlog.items():
        assert report.pending == expected[destination].get("pending", 0)
        assert report.dead == expected[destination].get("dead", 0)
        assert report.oldest_pending_age is not None and report.oldest_pending_age >= 0
        assert destination in oldest
    seen = queries.overview(mixed)  # what `relay status` reads, in one pass
    assert seen.counts == expected
    assert set(seen.oldest_pending_age) == set(oldest)
    for destination, age in seen.oldest_pending_age.items():
        assert abs(age - (backlog[destination].oldest_pending_age or 0)) < 5
    # Filtered counts (the demo's) still go through the same query, exactly.
    only = Filters([Status.PENDING.value], "servoki")
    assert queries.status_counts(mixed, only) == {
        "servoki": {"pending": expected["servoki"]["pending"]}
    }


def test_counts_after_changes_and_prune(mixed: Engine) -> None:
    """Counts follow every change: a retry of the dead, a prune of the delivered."""
    queries.retry(mixed, filters=Filters([Status.DEAD.value]))
    assert queries.status_counts(mixed) == plain_counts(mixed)
    with mixed.begin() as conn:
        conn.execute(update(outbox).values(updated_at=utcnow() - timedelta(days=2)))
    assert queries.prune(mixed, 3600, batch=3) > 0
    counts = queries.status_counts(mixed)
    assert counts == plain_counts(mixed)
    assert all("delivered" not in by_status for by_status in counts.values())


@pytest.mark.parametrize(
    "filters",
    [
        Filters(),
        Filters([Status.DEAD.value]),
        Filters([Status.PENDING.value, Status.DELIVERED.value]),
        Filters(destination="datalook"),
        Filters([Status.DISCARDED.value], "datalook"),
        Filters(reason="404"),
        Filters(destination="nobody"),
    ],
)
@pytest.mark.parametrize("limit", [1, 5, 50, None])
def test_listings_match_the_full_sort(mixed: Engine, filters: Filters, limit: int | None) -> None:
    """Merged per (status, destination), a listing is exactly the first rows of the whole
    outbox sorted by change time, newest first (ties by id)."""
    statement = (
        select(outbox.c.event_id, outbox.c.destination)
        .where(*filters.clauses())
        .order_by(outbox.c.updated_at.desc(), outbox.c.id.desc())
    )
    with mixed.connect() as conn:
        expected = [tuple(row) for row in conn.execute(statement)][:limit]
    listed = queries.list_rows(mixed, filters, limit)
    assert [(row.event_id, row.destination) for row in listed] == expected


def test_destinations_by_loose_index_scan(mixed: Engine) -> None:
    with mixed.connect() as conn:
        distinct = set(conn.execute(select(outbox.c.destination).distinct()).scalars())
    assert queries.destinations_in_outbox(mixed) == distinct == {"servoki", "datalook", "tenant-7"}


def test_empty_outbox(engine: Engine) -> None:
    assert queries.status_counts(engine) == {}
    assert queries.backlog(engine) == {}
    assert queries.list_rows(engine, Filters(), 50) == []
    assert queries.destinations_in_outbox(engine) == set()


def test_status_counts_read_only_the_status_index(mixed: Engine) -> None:
    """No row is read: SQLite scans the covering index; PostgreSQL (statistics and the
    visibility map fresh, sequential scans off to ask whether it can) does an index-only scan."""
    statement = select(outbox.c.status, outbox.c.destination, func.count()).group_by(
        outbox.c.status, outbox.c.destination
    )
    sql = str(statement.compile(mixed, compile_kwargs={"literal_binds": True}))
    if mixed.dialect.name == "sqlite":
        with mixed.connect() as conn:
            plan = " ".join(
                str(row[-1]) for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")
            )
        assert f"COVERING INDEX {STATUS_INDEX}" in plan
        assert "TEMP B-TREE" not in plan  # grouped in the index's order: nothing sorted
        return
    with mixed.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE relay_outbox")
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(conn.exec_driver_sql(f"EXPLAIN {sql}").scalars())
    assert f"Index Only Scan using {STATUS_INDEX}" in plan, plan


# -- prune beside a delivering worker --------------------------------------------------------


def old_history(engine: Engine, rows: int) -> None:
    """``rows`` delivered rows of another destination, changed two days ago, each with an
    attempt recorded."""
    two_days_ago = utcnow() - timedelta(days=2)
    box = Outbox(engine)
    for start in range(0, rows, 2000):
        box.insert(events("history", min(2000, rows - start), prefix=f"h{start}-"))
    with engine.begin() as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.destination == "history")
            .values(
                status=Status.DELIVERED.value,
                updated_at=two_days_ago,
                delivered_at=two_days_ago,
            )
        )
        conn.execute(
            text(
                "INSERT INTO relay_attempts (outbox_id, attempt, at, status, verdict) "
                "SELECT id, 1, updated_at, 202, 'delivered' FROM relay_outbox "
                "WHERE destination = 'history'"
            )
        )


class Delivering(threading.Thread):
    """A worker's dispatch side: new events arrive, are claimed and delivered; every claim
    is timed. A statement that waits more than 2 s for a lock (SQLite: for the write lock)
    fails, and :meth:`finish` raises it."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.engine = make_engine(url, statement_timeout=2)
        self.box = Outbox(self.engine)
        self.claims: list[tuple[float, float]] = []  # (started, seconds)
        self.delivered: set[str] = set()
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        sent = 0
        try:
            while not self.stop.is_set():
                self.box.insert(events("servoki", 10, prefix=f"live{sent}-"))
                sent += 10
                started = time.monotonic()
                claimed = self.box.claim_due(10, 60, ["servoki"])
                self.claims.append((started, time.monotonic() - started))
                for claim in claimed:
                    assert self.box.mark_delivered(claim, 202) is not None
                    self.delivered.add(claim.event_id)
                time.sleep(0.002)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(60)
        self.engine.dispose()
        if self.error is not None:
            raise self.error


def test_prune_in_batches_beside_a_delivering_worker(db_url: str) -> None:
    """Pruning 20k old rows in batches of 500: every old row and its attempts go, nothing
    the worker delivers meanwhile is touched, and the worker's claims go on between the
    batches without waiting long for them."""
    engine = make_engine(db_url)
    old_history(engine, 20_000)
    worker = Delivering(db_url)
    worker.start()
    time.sleep(1.2)
    quiet = [started for started, _ in worker.claims if started >= time.monotonic() - 1.0]
    batches: list[float] = []
    pruned = queries.prune(
        engine, 3600, batch=500, progress=lambda n: batches.append(time.monotonic())
    )
    time.sleep(0.3)
    worker.finish()

    assert pruned == 20_000
    assert len(batches) == 40
    with engine.connect() as conn:
        left = Counter(conn.execute(select(outbox.c.destination, outbox.c.status)).all())
        attempts = conn.exec_driver_sql(
            "SELECT count(*) FROM relay_attempts a LEFT JOIN relay_outbox o ON o.id = a.outbox_id "
            "WHERE o.id IS NULL"
        ).scalar_one()
    assert attempts == 0  # no attempt outlives its row
    assert ("history", Status.DELIVERED.value) not in left
    assert left[("servoki", Status.DELIVERED.value)] == len(worker.delivered)  # none pruned
    during = [took for started, took in worker.claims if batches[0] <= started <= batches[-1]]
    assert during, "the worker claimed nothing while the prune ran"
    if db_url.startswith("sqlite"):
        # Starved, a SQLite worker claimed 7 times while 100 back-to-back batches ran (4.2 s),
        # once after 2.7 s; with the pause between batches, 431 times (the slowest 87 ms).
        # (PostgreSQL's prune locks only the rows it deletes: the lock timeout covers it.)
        rate = len(during) / (batches[-1] - batches[0])
        assert rate >= len(quiet) / 10, f"{rate:.0f} claims/s while pruning, {len(quiet)} before"
    engine.dispose()


def test_prune_leaves_young_pending_and_dead_rows(db_url: str) -> None:
    engine = make_engine(db_url)
    box = Outbox(engine)
    box.insert(events("servoki", 6))
    claims = box.claim_due(6, 60, ["servoki"])
    box.mark_delivered(claims[0], 202)
    box.mark_dead(claims[1], 404, "HTTP 404")
    box.release(claims[2], 3600)
    with engine.begin() as conn:
        conn.execute(update(outbox).values(updated_at=utcnow() - timedelta(days=3)))
    box.insert(events("servoki", 2, prefix="young"))
    [young] = box.claim_due(1, 60, ["servoki"])
    box.mark_delivered(young, 202)
    assert queries.count_prunable(engine, 86400) == 1
    assert queries.prune(engine, 86400, batch=1) == 1
    assert queries.status_counts(engine) == {
        "servoki": {"dead": 1, "pending": 5, "delivered": 1}  # the young delivery stays
    }
    engine.dispose()
