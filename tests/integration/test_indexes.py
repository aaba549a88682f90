"""Indexes (migration 0004): the hot queries read only the rows they return.

A claim, the next due time and an ``event_id`` lookup must not slow down with another
destination's backlog or with the delivered history. Checked on PostgreSQL's own plans over a
real backlog (300k rows, inserted in one statement), with the statements the code issues
captured as they run; the migration goes both ways on both databases.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Engine, event, inspect, select, text

from relay.outbox.engine import make_engine
from relay.outbox.migrate import _config, upgrade
from relay.outbox.queries import find_rows
from relay.outbox.schema import metadata, outbox
from relay.outbox.store import Outbox, utcnow
from relay.queue.wire import NewEvent
from tests.support.services import Postgres

PENDING_DUE = "ix_relay_outbox_pending_due"
EVENT_ID = "ix_relay_outbox_event_id"
NEW = {PENDING_DUE, EVENT_ID}
OLD = {"ix_relay_outbox_due"}  # (status, next_attempt_at): 0004 replaces it

BACKLOG = 300_000


def downgrade(engine: Engine, revision: str) -> None:
    config = _config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def indexes(engine: Engine) -> dict[str, dict[str, Any]]:
    return {ix["name"]: ix for ix in inspect(engine).get_indexes("relay_outbox") if ix["name"]}


def where_of(engine: Engine, reflected: dict[str, Any]) -> str | None:
    """A reflected index's WHERE, as :func:`bare` SQL."""
    return bare(reflected.get("dialect_options", {}).get(f"{engine.dialect.name}_where"))


def bare(sql: object) -> str | None:
    """SQL without the casts, brackets, table names and spaces a database adds or drops."""
    return None if sql is None else re.sub(r"[()\s]|::\w+|relay_outbox\.", "", str(sql))


def fill(engine: Engine, destination: str, rows: int, status: str = "pending") -> None:
    """``rows`` rows of ``destination`` in one statement, due over the past hour (before any
    row inserted normally)."""
    with engine.begin() as conn:
        conn.execute(
            text(
                """
                INSERT INTO relay_outbox (destination, event_id, payload, status, attempts,
                    next_attempt_at, enqueued_at, created_at, updated_at, delivered_at)
                SELECT p.destination, p.destination || '-' || g, json_build_object('n', g),
                    p.status, 0, p.hour_ago + g * interval '1 millisecond',
                    p.hour_ago, p.hour_ago, p.hour_ago,
                    CASE WHEN p.status = 'delivered' THEN p.hour_ago END
                FROM generate_series(1, :rows) AS g, (
                    SELECT CAST(:destination AS text) AS destination,
                        CAST(:status AS text) AS status,
                        (now() AT TIME ZONE 'utc') - interval '1 hour' AS hour_ago
                ) AS p
                """
            ),
            {"destination": destination, "rows": rows, "status": status},
        )
        conn.exec_driver_sql("ANALYZE relay_outbox")


def arrive(engine: Engine, destination: str, n: int) -> None:
    """``n`` events of ``destination`` drained the ordinary way: due now."""
    now = utcnow()
    Outbox(engine).insert(
        [NewEvent(destination, f"{destination}{i}", {"n": i}, now) for i in range(n)]
    )


def captured(engine: Engine, call: Callable[[], object]) -> tuple[str, Any]:
    """The one statement on relay_outbox that ``call`` sends, exactly as the driver got it."""
    sent: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "relay_outbox" in statement:
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", remember)
    try:
        call()
    finally:
        event.remove(engine, "before_cursor_execute", remember)
    [one] = sent
    return one


def explain(engine: Engine, statement: str, parameters: Any) -> dict[str, Any]:
    """EXPLAIN (ANALYZE) of ``statement``: it runs, so a claim claims, then rolls back."""
    with engine.connect() as conn:
        [[plan]] = conn.exec_driver_sql(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {statement}", parameters
        ).all()
        conn.rollback()
    result: dict[str, Any] = plan[0]
    return result


def generic_plan(engine: Engine, statement: str) -> dict[str, Any]:
    """The plan PostgreSQL would cache for ``statement`` once psycopg prepares it (after five
    runs on one connection): parameters unknown, only literals can prove a partial index."""
    numbered: list[str] = []

    def number(match: re.Match[str]) -> str:
        numbered.append(match.group(1))
        return f"${len(numbered)}"

    sql = re.sub(r"%\((\w+)\)s", number, statement)
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.execute(
            f"EXPLAIN (GENERIC_PLAN, FORMAT JSON) {sql}"
        )
        [[plan]] = cursor.fetchall()
        conn.rollback()
    result: dict[str, Any] = plan[0]
    return result


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    stack = [plan["Plan"]]
    while stack:
        node = stack.pop()
        yield node
        stack += node.get("Plans", [])


def assert_reads_only_its_rows(plan: dict[str, Any], index: str, limit: int = 50) -> None:
    """``plan`` reaches relay_outbox through ``index`` (never a sequential scan) and looks at
    a handful of rows and pages, whatever the backlog."""
    scans = [node for node in nodes(plan) if node.get("Relation Name") == "relay_outbox"]
    assert index in {node.get("Index Name") for node in scans}, plan
    assert not [node for node in scans if "Seq Scan" in node["Node Type"]], plan
    if "Execution Time" not in plan:
        return  # a generic plan: estimates only
    for node in nodes(plan):
        looked_at = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
        assert looked_at * node["Actual Loops"] <= limit, node
    pages = plan["Plan"]["Shared Hit Blocks"] + plan["Plan"]["Shared Read Blocks"]
    assert pages <= 20 * limit, plan


# -- the migration ----------------------------------------------------------------------


def test_migration_0004_keeps_rows_and_goes_both_ways(db_url: str) -> None:
    """An outbox at 0003 with rows in it gets the new indexes and loses the old one; back too."""
    engine = make_engine(db_url)
    box = Outbox(engine)
    downgrade(engine, "0003")
    assert indexes(engine).keys() & (OLD | NEW) == OLD
    arrive(engine, "servoki", 5)
    arrive(engine, "datalook", 3)
    [claimed] = box.claim_due(1, 60, ["servoki"])
    box.mark_delivered(claimed, 202)
    waiting = {f"servoki{i}" for i in range(5)} - {claimed.event_id}

    def rows() -> list[Any]:
        with engine.connect() as conn:
            return conn.execute(select(outbox).order_by(outbox.c.id)).all()

    before = rows()
    upgrade(engine)
    found = indexes(engine)
    assert found.keys() & (OLD | NEW) == NEW
    assert found[PENDING_DUE]["column_names"] == ["destination", "next_attempt_at"]
    assert where_of(engine, found[PENDING_DUE]) == "status='pending'"
    assert found[EVENT_ID]["column_names"] == ["event_id"]
    assert rows() == before
    assert {claim.event_id for claim in box.claim_due(10, 60, ["servoki"])} == waiting
    after = rows()
    downgrade(engine, "0003")
    assert indexes(engine).keys() & (OLD | NEW) == OLD
    assert rows() == after
    upgrade(engine)
    engine.dispose()


def test_schema_module_declares_the_migrated_indexes(db_url: str) -> None:
    """relay/schema.py and the migrations agree on every index of both tables."""
    engine = make_engine(db_url)
    dialect = engine.dialect
    for table in metadata.sorted_tables:
        declared = {
            ix.name: (
                [column.name for column in ix.columns],
                bare(ix.dialect_options[dialect.name]["where"]),
            )
            for ix in table.indexes
        }
        migrated = {
            ix["name"]: (ix["column_names"], where_of(engine, ix))
            for ix in inspect(engine).get_indexes(table.name)
            if ix["name"] and not ix.get("duplicates_constraint")
        }
        assert declared == migrated, table.name
    engine.dispose()


# -- plans over a backlog (PostgreSQL) --------------------------------------------------


@pytest.fixture(scope="module")
def backlog(postgres: Postgres) -> Iterator[Engine]:
    """A's outage backlog (300k pending rows, all due before B's), B's delivered history
    (50k) and 60 pending rows of B, due now."""
    engine = make_engine(postgres.fresh())
    fill(engine, "A", BACKLOG)
    fill(engine, "B", 50_000, status="delivered")
    arrive(engine, "B", 60)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE relay_outbox")
    yield engine
    engine.dispose()


def test_claim_reads_only_its_destinations_due_rows(backlog: Engine) -> None:
    box = Outbox(backlog)
    statement, parameters = captured(backlog, lambda: box.claim_due(5, 60, ["B"]))
    assert "FOR UPDATE SKIP LOCKED" in statement
    assert_reads_only_its_rows(explain(backlog, statement, parameters), PENDING_DUE)
    # psycopg prepares a statement after five runs and PostgreSQL may then plan it once for
    # any parameters: the partial index must still be provably usable.
    assert_reads_only_its_rows(generic_plan(backlog, statement), PENDING_DUE)


def test_next_due_reads_one_entry_per_destination(backlog: Engine) -> None:
    box = Outbox(backlog)
    for destinations in (["B"], ["A", "B"], ["B", "C"]):
        statement, parameters = captured(backlog, lambda d=destinations: box.next_due_at(d))
        assert_reads_only_its_rows(explain(backlog, statement, parameters), PENDING_DUE)
        assert_reads_only_its_rows(generic_plan(backlog, statement), PENDING_DUE)
    assert box.next_due_at(["C"]) is None
    due_a, due_b = box.next_due_at(["A"]), box.next_due_at(["B"])
    assert due_a is not None and due_b is not None and due_a < due_b
    assert box.next_due_at(["A", "B", "C"]) == due_a and box.next_due_at(["B", "C"]) == due_b


def test_event_id_lookup_without_destination_uses_its_index(backlog: Engine) -> None:
    statement, parameters = captured(backlog, lambda: find_rows(backlog, ["A-1234"], None))
    assert_reads_only_its_rows(explain(backlog, statement, parameters), EVENT_ID)
    [row] = find_rows(backlog, ["A-1234"], None)
    assert row.destination == "A"


def test_claim_time_with_and_without_a_backlog(postgres: Postgres) -> None:
    """Printed, not asserted: the median claim of B's rows, before and after 0004."""
    engine = make_engine(postgres.fresh())
    box = Outbox(engine)
    fill(engine, "B", 50_000, status="delivered")
    arrive(engine, "B", 1000)

    def claim_ms() -> float:
        with engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE relay_outbox")
        box.claim_due(5, 600, ["B"])  # warm the connection and the plan
        times = []
        for _ in range(40):
            start = time.perf_counter()
            assert len(box.claim_due(5, 600, ["B"])) == 5
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    figures = {}
    for backlog_rows in (0, BACKLOG):
        downgrade(engine, "0003")
        if backlog_rows:
            fill(engine, "A", backlog_rows)
        figures[backlog_rows, "0003"] = claim_ms()
        upgrade(engine)
        figures[backlog_rows, "0004"] = claim_ms()
    engine.dispose()
    print("\nmedian claim of 5 rows of B (50k delivered B rows in the table):")
    for (backlog_rows, revision), ms in figures.items():
        print(f"  A backlog {backlog_rows:>7,} rows, schema {revision}: {ms:6.2f} ms")


def test_sqlite_claim_and_lookup_use_the_indexes(tmp_path: Any) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'outbox.db'}")
    upgrade(engine)
    arrive(engine, "A", 200)
    arrive(engine, "B", 5)
    box = Outbox(engine)
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: box.claim_due(5, 60, ["B"]), PENDING_DUE),
        (lambda: box.next_due_at(["A", "B"]), PENDING_DUE),
        (lambda: find_rows(engine, ["A7"], None), EVENT_ID),
    ]
    for call, index in calls:
        statement, parameters = captured(engine, call)
        with engine.connect() as conn:
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            conn.rollback()
        steps = [row[-1] for row in plan]
        assert any(step.startswith("SEARCH relay_outbox") and index in step for step in steps)
        assert not [step for step in steps if step.startswith("SCAN relay_outbox")], steps
    engine.dispose()
