"""Outcome writes: one claim's, or a whole round's together (group commit).

Every outcome is an update of one row guarded by the claim's lease token (and ``status =
'pending'``), plus, for an answered attempt, one row of the attempts history timed with the
row's ``updated_at``, in the same transaction. A batch writes many of them in one transaction
with as few statements as the database allows:

- PostgreSQL: one statement. The outcomes travel as arrays (``unnest``), so the statement's
  text is the same for any batch size and psycopg prepares it once; a data-modifying CTE
  inserts the history of exactly the rows the guarded update changed.
- SQLite: two statements per 100 outcomes, ``WITH v AS (VALUES …) UPDATE … FROM v …
  RETURNING`` and one multi-row ``INSERT`` of the history for the rows it returned. (Not
  JSON: SQLite's JSON functions cut text at a NUL, which a bound parameter keeps.)

Each row keeps its own guard: an outcome whose lease was lost changes nothing and is reported
as not written (None), while the rest of the batch is written. A batch the database refuses for
the data one outcome carries fails as a whole; the caller then writes its outcomes one by one,
so the refusal stays with that one row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, Dialect

from relay.destinations.outcome import truncate
from relay.outbox.schema import Status, attempts, db_now, outbox

ATTEMPT_DETAIL_LIMIT = 500
"""Characters of a response or error kept per attempt in the history (the row keeps 2,000)."""

SQLITE_CHUNK = 100
"""Outcomes per SQLite statement: 9 parameters each stays under SQLite's oldest limit (999)."""


class Claimed(Protocol):
    """What an outcome needs of its claim (:class:`relay.outbox.store.Claim`)."""

    @property
    def id(self) -> int: ...
    @property
    def lease_token(self) -> str: ...
    @property
    def attempts(self) -> int: ...


@dataclass(frozen=True)
class Finish:
    """One claim's outcome as the row and its history will show it.

    ``row_id``/``lease_token``/``attempt`` come from the claim; ``status`` is the row's new
    status; ``last`` the (HTTP status, detail) kept as the row's last response (None keeps the
    previous one); ``delay`` makes the row due again that many seconds after the write, on the
    database's clock (None leaves ``next_attempt_at`` alone); ``refund`` gives the claim's
    attempt back; ``stamp_delivered`` sets ``delivered_at``; ``verdict`` names the attempt in the
    history (None: the row went back unsent and records nothing).
    """

    row_id: int
    lease_token: str
    attempt: int
    status: str
    last: tuple[int | None, str | None] | None
    delay: float | None = None
    refund: bool = False
    stamp_delivered: bool = False
    verdict: str | None = None

    @classmethod
    def delivered(cls, claim: Claimed, status: int) -> Finish:
        """Delivered: the documented success, kept as the row's last response."""
        return cls(*_of(claim), Status.DELIVERED.value, (status, None), stamp_delivered=True,
                   verdict="delivered")  # fmt: skip

    @classmethod
    def dead(cls, claim: Claimed, status: int | None, detail: str) -> Finish:
        """Dead, with the response (or the reason) that ended it."""
        return cls(*_of(claim), Status.DEAD.value, (status, detail), verdict="dead")

    @classmethod
    def retry(
        cls, claim: Claimed, status: int | None, detail: str, delay: float, refund: bool
    ) -> Finish:
        """Still pending, due again ``delay`` seconds after the write; ``refund``: a 429."""
        return cls(*_of(claim), Status.PENDING.value, (status, detail), delay, refund,
                   verdict="retry")  # fmt: skip

    @classmethod
    def release(
        cls, claim: Claimed, delay: float, refused: tuple[int | None, str] | None
    ) -> Finish:
        """Given back, attempt refunded, due after ``delay`` s; ``refused``: the answer that
        paused the destination (kept, and in the history), else nothing is recorded."""
        verdict = None if refused is None else "pause"
        return cls(*_of(claim), Status.PENDING.value, refused, delay, True, verdict=verdict)

    @property
    def history(self) -> tuple[int | None, str | None]:
        """(HTTP status, detail) of the attempt's history row (its detail shortened)."""
        status, detail = self.last or (None, None)
        return status, truncate(detail, ATTEMPT_DETAIL_LIMIT) if detail else None


def _of(claim: Claimed) -> tuple[int, str, int]:
    return claim.id, claim.lease_token, claim.attempts


def write(conn: Connection, finishes: Sequence[Finish]) -> list[datetime | None]:
    """Write ``finishes`` on ``conn`` (inside its transaction): for each, the database's time
    of the write, or None when its claim no longer held the lease (nothing was written)."""
    dialect = conn.dialect
    read_time = _time_reader(dialect)
    written: dict[int, datetime | None] = {}
    if dialect.name == "postgresql":
        for row_id, updated_at in conn.exec_driver_sql(_POSTGRES, _arrays(finishes)):
            written[row_id] = read_time(updated_at)
    else:
        for chunk in _chunks(finishes, SQLITE_CHUNK):
            for row_id, updated_at in _sqlite_chunk(conn, chunk):
                written[row_id] = read_time(updated_at)
    return [written.get(finish.row_id) for finish in finishes]


# -- PostgreSQL: one statement whatever the batch size ----------------------------------------

_NOW_PG = str(db_now("postgresql"))  # the database's clock: one definition, in schema.db_now

_POSTGRES = f"""
WITH v AS (
    SELECT * FROM unnest(
        %(row_id)s::bigint[], %(token)s::text[], %(status)s::text[], %(keep_last)s::bool[],
        %(http_status)s::int[], %(error)s::text[], %(delay)s::float8[], %(refund)s::int[],
        %(delivered)s::bool[], %(verdict)s::text[], %(detail)s::text[], %(attempt)s::int[]
    ) AS v(row_id, token, status, keep_last, http_status, error, delay, refund, delivered,
           verdict, detail, attempt)
), changed AS (
    UPDATE {outbox.name} AS o SET
        status = v.status,
        last_status = CASE WHEN v.keep_last THEN o.last_status ELSE v.http_status END,
        last_error = CASE WHEN v.keep_last THEN o.last_error ELSE v.error END,
        next_attempt_at = CASE WHEN v.delay IS NULL THEN o.next_attempt_at
            ELSE {_NOW_PG} + v.delay * INTERVAL '1 second' END,
        attempts = o.attempts - v.refund,
        delivered_at = CASE WHEN v.delivered THEN {_NOW_PG} ELSE o.delivered_at END,
        lease_token = NULL,
        updated_at = {_NOW_PG}
    FROM v
    WHERE o.id = v.row_id AND o.lease_token = v.token AND o.status = '{Status.PENDING.value}'
    RETURNING o.id, o.updated_at
), history AS (
    INSERT INTO {attempts.name} (outbox_id, attempt, at, status, verdict, detail)
    SELECT v.row_id, v.attempt, changed.updated_at, v.http_status, v.verdict, v.detail
    FROM changed JOIN v ON v.row_id = changed.id
    WHERE v.verdict IS NOT NULL
)
SELECT id, updated_at FROM changed
"""


def _arrays(finishes: Sequence[Finish]) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {
        name: []
        for name in (
            "row_id", "token", "status", "keep_last", "http_status", "error", "delay",
            "refund", "delivered", "verdict", "detail", "attempt",
        )
    }  # fmt: skip
    for finish in finishes:
        status, error = finish.last or (None, None)
        _, detail = finish.history
        columns["row_id"].append(finish.row_id)
        columns["token"].append(finish.lease_token)
        columns["status"].append(finish.status)
        columns["keep_last"].append(finish.last is None)
        columns["http_status"].append(status)
        columns["error"].append(error)
        columns["delay"].append(finish.delay)
        columns["refund"].append(1 if finish.refund else 0)
        columns["delivered"].append(finish.stamp_delivered)
        columns["verdict"].append(finish.verdict)
        columns["detail"].append(detail)
        columns["attempt"].append(finish.attempt)
    return columns


# -- SQLite: an update and the history's insert per chunk -------------------------------------

_NOW_SQLITE = "strftime('%Y-%m-%d %H:%M:%f', 'now', {shift}) || '000'"
"""schema.db_now on SQLite, shifted by a per-row modifier (``'+30.000 seconds'``)."""

_SQLITE_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?)"


def _sqlite_update(rows: int) -> str:
    now = _NOW_SQLITE.format(shift="'+0 seconds'")
    later = _NOW_SQLITE.format(shift="v.shift")
    return f"""
WITH v(row_id, token, status, keep_last, http_status, error, shift, refund, delivered) AS (
    VALUES {", ".join([_SQLITE_ROW] * rows)}
)
UPDATE {outbox.name} SET
    status = v.status,
    last_status = CASE WHEN v.keep_last THEN {outbox.name}.last_status ELSE v.http_status END,
    last_error = CASE WHEN v.keep_last THEN {outbox.name}.last_error ELSE v.error END,
    next_attempt_at = CASE WHEN v.shift IS NULL THEN {outbox.name}.next_attempt_at
        ELSE {later} END,
    attempts = {outbox.name}.attempts - v.refund,
    delivered_at = CASE WHEN v.delivered THEN {now} ELSE {outbox.name}.delivered_at END,
    lease_token = NULL,
    updated_at = {now}
FROM v
WHERE {outbox.name}.id = v.row_id AND {outbox.name}.lease_token = v.token
    AND {outbox.name}.status = '{Status.PENDING.value}'
RETURNING {outbox.name}.id, {outbox.name}.updated_at
"""


def _sqlite_history(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?, ?, ?)"] * rows)
    return (
        f"INSERT INTO {attempts.name} (outbox_id, attempt, at, status, verdict, detail) "
        f"VALUES {values}"
    )


def _sqlite_chunk(conn: Connection, chunk: Sequence[Finish]) -> list[tuple[int, Any]]:
    params: list[Any] = []
    for finish in chunk:
        status, error = finish.last or (None, None)
        shift = None if finish.delay is None else f"{finish.delay:+.3f} seconds"
        params += [finish.row_id, finish.lease_token, finish.status, finish.last is None]
        params += [status, error, shift, 1 if finish.refund else 0, finish.stamp_delivered]
    result = conn.exec_driver_sql(_sqlite_update(len(chunk)), tuple(params))
    changed = [(row[0], row[1]) for row in result]
    stamped = dict(changed)  # updated_at as stored: the history's time, to the microsecond
    history: list[Any] = []
    for finish in chunk:
        if finish.verdict is not None and finish.row_id in stamped:
            status, detail = finish.history
            history += [finish.row_id, finish.attempt, stamped[finish.row_id], status]
            history += [finish.verdict, detail]
    if history:
        conn.exec_driver_sql(_sqlite_history(len(history) // 6), tuple(history))
    return changed


# -- both ---------------------------------------------------------------------------------------


def _time_reader(dialect: Dialect) -> Callable[[Any], datetime | None]:
    """Turn a raw ``updated_at`` from the driver into the aware UTC datetime the table reads."""
    processor = outbox.c.updated_at.type.dialect_impl(dialect).result_processor(dialect, None)
    assert processor is not None  # UTCDateTime always processes what it reads
    return processor


def _chunks(items: Sequence[Finish], size: int) -> Iterator[Sequence[Finish]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
