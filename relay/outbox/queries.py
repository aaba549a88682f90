"""Outbox queries for operators: list, show, retry, discard and prune rows.

Every bulk change works in batches of ids, one short transaction each, so a retry of a million
dead rows never holds a lock for long and a progress bar can follow it. Changes are guarded by
the status the row had when it was selected: a row a worker changed in between is left alone.
Times are the database's (:func:`relay.schema.db_now`), as the workers' are: the CLI may run on
any host, with any clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, and_, delete, func, or_, select, update

from relay.outbox.schema import Status, attempts, db_now, outbox

Progress = Callable[[int], None]
"""Called with how many rows one batch changed."""

RETRYABLE = (Status.DEAD.value, Status.DISCARDED.value)
DISCARDABLE = (Status.DEAD.value, Status.PENDING.value)
PRUNABLE = (Status.DELIVERED.value, Status.DISCARDED.value)

SQLITE_PRUNE_PAUSE_CAP = 0.5
"""Seconds a prune on SQLite leaves the write lock free after a batch, at most."""


def reason_of(status: int | None, error: str | None) -> str:
    """A short reason for a failed row: ``HTTP 404``, or the error's class (``timeout``)."""
    if status:
        return f"HTTP {status}"
    text = error or "unknown"
    # "gave up after 25 attempts (…); last: timeout: ReadTimeout" → the last error's class.
    if "; last: " in text:
        text = text.split("; last: ", 1)[1]
    return text.split(":", 1)[0].strip() or "unknown"


@dataclass(frozen=True)
class Filters:
    """Which rows a listing or a bulk change applies to."""

    statuses: Sequence[str] = ()
    destination: str | None = None
    since: datetime | None = None
    reason: str | None = None
    event_id_prefix: str | None = None
    """Only events whose id starts with this (``relay demo``'s run)."""

    def clauses(self) -> list[ColumnElement[bool]]:
        where: list[ColumnElement[bool]] = []
        if self.statuses:
            where.append(outbox.c.status.in_(list(self.statuses)))
        if self.destination:
            where.append(outbox.c.destination == self.destination)
        if self.since is not None:
            where.append(outbox.c.updated_at >= self.since)
        if self.reason:
            where.append(reason_clause(self.reason))
        if self.event_id_prefix:
            where.append(outbox.c.event_id.startswith(self.event_id_prefix, autoescape=True))
        return where


def reason_clause(reason: str) -> ColumnElement[bool]:
    """``404`` or ``HTTP 404`` match the HTTP status; other text matches inside the error."""
    text = reason.strip()
    digits = text.upper().removeprefix("HTTP").strip()
    if digits.isdigit():
        return outbox.c.last_status == int(digits)
    return func.lower(outbox.c.last_error).contains(text.lower(), autoescape=True)


@dataclass(frozen=True)
class OutboxRow:
    """One outbox row as operators see it (times as ISO 8601 strings); the fields in the order
    ``--json`` shows them."""

    event_id: str
    destination: str
    status: str
    attempts: int
    last_status: int | None
    last_error: str | None
    reason: str | None
    """Why a dead row died (:func:`reason_of`); None for other rows."""
    created_at: str | None
    enqueued_at: str | None
    retried_at: str | None
    updated_at: str | None
    next_attempt_at: str | None
    """When a pending row is due; None for other rows."""
    delivered_at: str | None

    @classmethod
    def of(cls, row: Any) -> OutboxRow:
        """The operator's view of a selected row (the listed columns)."""
        dead = row.status == Status.DEAD.value
        return cls(
            event_id=row.event_id,
            destination=row.destination,
            status=row.status,
            attempts=row.attempts,
            last_status=row.last_status,
            last_error=row.last_error,
            reason=reason_of(row.last_status, row.last_error) if dead else None,
            created_at=_iso(row.created_at),
            enqueued_at=_iso(row.enqueued_at),
            retried_at=_iso(row.retried_at),
            updated_at=_iso(row.updated_at),
            next_attempt_at=_iso(row.next_attempt_at)
            if row.status == Status.PENDING.value
            else None,
            delivered_at=_iso(row.delivered_at),
        )


@dataclass(frozen=True)
class Attempt:
    """One recorded attempt of a row."""

    attempt: int
    at: str | None
    status: int | None
    verdict: str
    detail: str | None


@dataclass(frozen=True)
class Backlog:
    """One destination's pending and dead rows, and the age of its oldest pending event."""

    pending: int = 0
    dead: int = 0
    oldest_pending_age: float | None = None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_LISTED = (
    outbox.c.id,
    outbox.c.event_id,
    outbox.c.destination,
    outbox.c.status,
    outbox.c.attempts,
    outbox.c.last_status,
    outbox.c.last_error,
    outbox.c.created_at,
    outbox.c.enqueued_at,
    outbox.c.retried_at,
    outbox.c.updated_at,
    outbox.c.next_attempt_at,
    outbox.c.delivered_at,
)


def list_rows(engine: Engine, filters: Filters, limit: int | None) -> list[OutboxRow]:
    """Rows matching ``filters``, most recently changed first.

    With a ``limit``, each (status, destination) is read newest first from the status index
    and the lists are merged: an outbox of a million rows is never sorted whole.
    """
    order = (outbox.c.updated_at.desc(), outbox.c.id.desc())
    statement = select(*_LISTED).where(*filters.clauses()).order_by(*order)
    with engine.connect() as conn:
        if not limit:
            return [OutboxRow.of(row) for row in conn.execute(statement)]
        statuses = list(filters.statuses) or [status.value for status in Status]
        names = [filters.destination] if filters.destination else _destinations(conn)
        found: list[Any] = []
        for status in statuses:
            for name in names:
                one = statement.where(outbox.c.status == status, outbox.c.destination == name)
                found += conn.execute(one.limit(limit)).all()
    found.sort(key=lambda row: (row.updated_at, row.id), reverse=True)
    return [OutboxRow.of(row) for row in found[:limit]]


def find_rows(engine: Engine, event_ids: Iterable[str], destination: str | None) -> list[Any]:
    """The rows (id, event_id, destination, status, …) of ``event_ids``."""
    ids = list(dict.fromkeys(event_ids))
    found: list[Any] = []
    with engine.connect() as conn:
        for start in range(0, len(ids), 500):
            statement = select(*_LISTED, outbox.c.payload).where(
                outbox.c.event_id.in_(ids[start : start + 500])
            )
            if destination:
                statement = statement.where(outbox.c.destination == destination)
            found += conn.execute(statement.order_by(outbox.c.id)).all()
    return found


def attempt_history(engine: Engine, outbox_id: int) -> list[Attempt]:
    """Every recorded attempt of one row, oldest first."""
    statement = (
        select(attempts.c.attempt, attempts.c.at, attempts.c.status, attempts.c.verdict)
        .add_columns(attempts.c.detail)
        .where(attempts.c.outbox_id == outbox_id)
        .order_by(attempts.c.id)
    )
    with engine.connect() as conn:
        return [
            Attempt(row.attempt, _iso(row.at), row.status, row.verdict, row.detail)
            for row in conn.execute(statement)
        ]


def count(engine: Engine, filters: Filters) -> int:
    statement = select(func.count()).select_from(outbox).where(*filters.clauses())
    with engine.connect() as conn:
        return int(conn.execute(statement).scalar_one())


# -- changes ----------------------------------------------------------------------------


def retry(
    engine: Engine,
    *,
    ids: Sequence[int] | None = None,
    filters: Filters | None = None,
    batch: int = 1000,
    progress: Progress | None = None,
) -> int:
    """Put dead (or discarded) rows back to pending, due now, attempts reset; how many."""
    now = db_now(engine.dialect.name)
    values = {
        "status": Status.PENDING.value,
        "attempts": 0,
        "next_attempt_at": now,
        "lease_token": None,
        "delivered_at": None,
        "updated_at": now,
        "retried_at": now,  # a fresh age budget too, not only fresh attempts
    }
    return _change(engine, outbox.c.status.in_(RETRYABLE), values, ids, filters, batch, progress)


def discard(
    engine: Engine,
    *,
    ids: Sequence[int] | None = None,
    filters: Filters | None = None,
    batch: int = 1000,
    progress: Progress | None = None,
) -> int:
    """Mark dead or pending rows discarded: never sent again, kept for audit; how many.

    A pending row a worker is sending right now (under a live lease) is left alone: it may be
    delivered a moment later, and "discarded" would then be a lie. Run discard again once its
    attempt has finished.
    """
    now = db_now(engine.dialect.name)
    guard = or_(
        outbox.c.status == Status.DEAD.value,
        and_(
            outbox.c.status == Status.PENDING.value,
            or_(outbox.c.lease_token.is_(None), outbox.c.next_attempt_at <= now),
        ),
    )
    values = {"status": Status.DISCARDED.value, "lease_token": None, "updated_at": now}
    return _change(engine, guard, values, ids, filters, batch, progress)


def make_due(engine: Engine, destination: str) -> int:
    """Make the pending rows of ``destination`` due now (on resume); how many.

    Rows under a lease (being sent right now) are left alone: moving them would let a second
    worker claim them while the first is still sending.
    """
    now = db_now(engine.dialect.name)
    statement = (
        update(outbox)
        .where(
            outbox.c.destination == destination,
            outbox.c.status == Status.PENDING.value,
            outbox.c.lease_token.is_(None),
            outbox.c.next_attempt_at > now,
        )
        .values(next_attempt_at=now)
    )
    with engine.begin() as conn:
        return int(conn.execute(statement).rowcount)


def _change(
    engine: Engine,
    guard: ColumnElement[bool],
    values: dict[str, Any],
    ids: Sequence[int] | None,
    filters: Filters | None,
    batch: int,
    progress: Progress | None,
) -> int:
    changed = 0
    for chunk in _batches(engine, ids, filters, guard, batch):
        statement = update(outbox).where(outbox.c.id.in_(chunk), guard).values(**values)
        with engine.begin() as conn:
            done = conn.execute(statement).rowcount
        changed += done
        if progress is not None:
            progress(done)
    return changed


def _batches(
    engine: Engine,
    ids: Sequence[int] | None,
    filters: Filters | None,
    guard: ColumnElement[bool],
    batch: int,
) -> Iterable[list[int]]:
    """Chunks of row ids: the given ones, or those matching ``filters`` (re-selected per batch,
    so rows changed by the previous batch drop out)."""
    if ids is not None:
        for start in range(0, len(ids), batch):
            yield list(ids[start : start + batch])
        return
    assert filters is not None
    last = 0
    while True:
        statement = (
            select(outbox.c.id)
            .where(and_(guard, outbox.c.id > last, *filters.clauses()))
            .order_by(outbox.c.id)
            .limit(batch)
        )
        with engine.connect() as conn:
            chunk = list(conn.execute(statement).scalars())
        if not chunk:
            return
        last = chunk[-1]
        yield chunk


def prune(
    engine: Engine,
    older_than: float,
    *,
    batch: int = 1000,
    progress: Progress | None = None,
) -> int:
    """Delete delivered and discarded rows (and their attempts) unchanged for ``older_than``
    seconds, in batches; how many rows.

    Each batch is one short transaction that locks only the rows it deletes, which no worker
    touches. Batches walk the ids upwards, so none reads past the rows the ones before it
    deleted. SQLite has one write lock for the whole database: after each batch the prune
    waits as long as the batch held it, so a worker's claim waits for one batch at most.
    """
    cutoff = db_now(engine.dialect.name, -older_than)
    old = and_(outbox.c.status.in_(PRUNABLE), outbox.c.updated_at < cutoff)
    deleted = 0
    last = 0
    while True:
        started = time.monotonic()
        with engine.begin() as conn:
            chunk = list(
                conn.execute(
                    select(outbox.c.id)
                    .where(old, outbox.c.id > last)
                    .order_by(outbox.c.id)
                    .limit(batch)
                ).scalars()
            )
            if not chunk:
                break
            conn.execute(delete(attempts).where(attempts.c.outbox_id.in_(chunk)))
            done = conn.execute(delete(outbox).where(outbox.c.id.in_(chunk), old)).rowcount
        last = chunk[-1]
        deleted += done
        if progress is not None:
            progress(done)
        if engine.dialect.name == "sqlite":
            time.sleep(min(time.monotonic() - started, SQLITE_PRUNE_PAUSE_CAP))
    return deleted


def count_prunable(engine: Engine, older_than: float) -> int:
    cutoff = db_now(engine.dialect.name, -older_than)
    statement = (
        select(func.count())
        .select_from(outbox)
        .where(outbox.c.status.in_(PRUNABLE), outbox.c.updated_at < cutoff)
    )
    with engine.connect() as conn:
        return int(conn.execute(statement).scalar_one())


# -- summaries --------------------------------------------------------------------------


@dataclass(frozen=True)
class Overview:
    """Every destination's rows by status, and the age of its oldest pending event."""

    counts: dict[str, dict[str, int]]
    oldest_pending_age: dict[str, float]


def overview(engine: Engine, statuses: Sequence[str] = ()) -> Overview:
    """Rows by destination and status (only ``statuses``, if given), exact, and each
    destination's oldest pending event's age, in one pass over the status index.

    The index (status, destination, …, enqueued_at) holds every value this reads, in the
    order it groups them: no row is read and nothing is sorted (a million rows: 80-140 ms
    on SQLite). Ages count to the database's now, not this host's.
    """
    statement = select(
        outbox.c.status, outbox.c.destination, func.count(), func.min(outbox.c.enqueued_at)
    ).group_by(outbox.c.status, outbox.c.destination)
    if statuses:
        statement = statement.where(outbox.c.status.in_(list(statuses)))
    counts: dict[str, dict[str, int]] = {}
    ages: dict[str, float] = {}
    with engine.connect() as conn:
        now = conn.execute(select(db_now(engine.dialect.name))).scalar_one()
        for status, destination, n, oldest in conn.execute(statement):
            counts.setdefault(destination, {})[status] = n
            if status == Status.PENDING.value and oldest is not None:
                # min() over a TypeDecorator column comes back raw on some dialects.
                ages[destination] = max(0.0, (now - _aware(oldest)).total_seconds())
    return Overview(counts, ages)


def backlog(engine: Engine) -> dict[str, Backlog]:
    """Per destination: pending and dead rows, and the age of the oldest pending event.

    Reads the pending and dead entries of the status index (:func:`overview`), never the
    delivered history and never a row.
    """
    seen = overview(engine, (Status.PENDING.value, Status.DEAD.value))
    return {
        name: Backlog(
            pending=by_status.get(Status.PENDING.value, 0),
            dead=by_status.get(Status.DEAD.value, 0),
            oldest_pending_age=seen.oldest_pending_age.get(name),
        )
        for name, by_status in seen.counts.items()
    }


def status_counts(engine: Engine, filters: Filters | None = None) -> dict[str, dict[str, int]]:
    """Rows by destination and status (those matching ``filters``), exact; unfiltered, from
    the status index alone (:func:`overview`)."""
    if filters is None or filters == Filters():
        return overview(engine).counts
    statement = (
        select(outbox.c.status, outbox.c.destination, func.count())
        .where(*filters.clauses())
        .group_by(outbox.c.status, outbox.c.destination)
    )
    result: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for status, destination, n in conn.execute(statement):
            result.setdefault(destination, {})[status] = n
    return result


def dead_reasons(engine: Engine, filters: Filters | None = None) -> dict[str, dict[str, int]]:
    """Dead rows (those matching ``filters``) by destination and reason (:func:`reason_of`:
    ``HTTP 404``, ``timeout``, …): what ``relay status`` and ``relay demo`` show."""
    statement = (
        select(outbox.c.destination, outbox.c.last_status, outbox.c.last_error, func.count())
        .where(outbox.c.status == Status.DEAD.value, *(filters or Filters()).clauses())
        .group_by(outbox.c.destination, outbox.c.last_status, outbox.c.last_error)
    )
    result: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        for destination, status, error, n in conn.execute(statement):
            bucket = result.setdefault(destination, {})
            reason = reason_of(status, error)
            bucket[reason] = bucket.get(reason, 0) + n
    return result


def destinations_in_outbox(engine: Engine) -> set[str]:
    """Every destination with a row in the outbox."""
    with engine.connect() as conn:
        return set(_destinations(conn))


def _destinations(conn: Connection) -> list[str]:
    """The outbox's destinations, in order: one step of the (destination, event_id) index per
    destination (a loose index scan), where ``SELECT DISTINCT`` reads every row."""
    first = select(func.min(outbox.c.destination).label("name")).cte("names", recursive=True)
    after = select(func.min(outbox.c.destination)).where(outbox.c.destination > first.c.name)
    names = first.union_all(
        select(after.scalar_subquery().label("name")).where(first.c.name.is_not(None))
    )
    return list(conn.execute(select(names.c.name).where(names.c.name.is_not(None))).scalars())


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value if value.tzinfo else value.replace(tzinfo=UTC)
