"""The outbox and attempts tables. The Alembic migrations in ``migrations/`` create them;
``tests/integration/test_migrations.py`` proves the two agree."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ColumnElement,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    literal,
    literal_column,
    type_coerce,
)


class Status(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"
    DISCARDED = "discarded"
    """Set aside by an operator (``relay outbox discard``): never sent again, kept for audit."""


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every database; always read back as an aware UTC datetime."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("outbox timestamps must be timezone-aware")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC)


def db_now(dialect: str, plus: float = 0.0) -> ColumnElement[datetime]:
    """The database's clock, UTC, ``plus`` seconds: SQL for a :class:`UTCDateTime` column.

    Every due time, lease end and outcome time is set and compared on this one clock, never a
    worker's: a host whose clock runs 61 s ahead would otherwise claim rows another worker still
    holds under a 60 s lease. ``plus`` is a bound parameter, so a random retry delay does not
    make a new statement to prepare.

    - PostgreSQL: ``now()``, the start of the transaction (stable inside it, so an index can
      serve ``next_attempt_at <= now()``; a claim's transaction starts after the worker took its
      monotonic lease deadline, so the database's lease never ends before the worker's).
    - SQLite: the text SQLAlchemy stores (``2026-11-23 18:45:24.123000``), so stored values and
      this compare as text; ``strftime('%f')`` keeps milliseconds where ``CURRENT_TIMESTAMP``
      has whole seconds. SQLite runs inside each process, so this is that host's clock: one
      host, one clock, as long as no process on it runs a shifted clock of its own.
    """
    expression: ColumnElement[Any]
    if dialect == "postgresql":
        expression = literal_column("(now() AT TIME ZONE 'UTC')")
        if plus:
            expression = expression + literal(plus, Float()) * literal_column("INTERVAL '1 second'")
    elif dialect == "sqlite":
        stamp = func.strftime(
            literal_column("'%Y-%m-%d %H:%M:%f'"),
            literal_column("'now'"),
            literal(f"{plus:+.3f} seconds"),
        )
        expression = stamp.concat(literal_column("'000'"))  # milliseconds → microseconds
    else:
        raise NotImplementedError(f"the outbox supports PostgreSQL and SQLite, not {dialect}")
    return type_coerce(expression, UTCDateTime())


metadata = MetaData()

# SQLite only auto-increments INTEGER PRIMARY KEY, so the BigInteger id is Integer there.
_ID = BigInteger().with_variant(Integer(), "sqlite")

outbox = Table(
    "relay_outbox",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("destination", String(100), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("payload", JSON, nullable=False),
    Column("status", String(16), nullable=False, default=Status.PENDING.value),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_token", String(36), nullable=True),
    Column("last_status", Integer, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("enqueued_at", UTCDateTime, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    # Set by `relay outbox retry`: the age limit (RELAY_MAX_AGE_SECONDS) counts from here.
    Column("retried_at", UTCDateTime, nullable=True),
    UniqueConstraint("destination", "event_id", name="uq_relay_outbox_destination_event"),
    # `relay outbox show/retry EVENT_ID` without a destination.
    Index("ix_relay_outbox_event_id", "event_id"),
    # Counts by status and destination, listings by age and the oldest pending event's age,
    # all from the index alone (``relay status`` at a million rows; migration 0005).
    Index(
        "ix_relay_outbox_status_destination", "status", "destination", "updated_at", "enqueued_at"
    ),
)

PENDING = outbox.c.status == literal_column(f"'{Status.PENDING.value}'")
"""``status = 'pending'`` with the value inline, as the partial index below says it: a plan
PostgreSQL caches for any parameters (psycopg prepares a statement after five runs) can use
that index only if the query names the same literal."""

# Claims and next-due reads: one destination's pending rows, earliest due first. Partial, so
# neither another destination's backlog nor the delivered history is in the way.
Index(
    "ix_relay_outbox_pending_due",
    outbox.c.destination,
    outbox.c.next_attempt_at,
    postgresql_where=PENDING,
    sqlite_where=PENDING,
)

# One row per recorded delivery attempt: the history `relay outbox show` prints. Written in the
# same transaction as the outcome it records; pruned together with its outbox row.
attempts = Table(
    "relay_attempts",
    metadata,
    Column("id", _ID, primary_key=True, autoincrement=True),
    Column("outbox_id", _ID, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("at", UTCDateTime, nullable=False),
    Column("status", Integer, nullable=True),
    Column("verdict", String(16), nullable=False),
    Column("detail", Text, nullable=True),
    Index("ix_relay_attempts_outbox", "outbox_id", "id"),
)
