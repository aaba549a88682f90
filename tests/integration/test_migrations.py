"""relay/outbox/schema.py and the Alembic migrations describe the same tables.

The application reads and writes through ``schema.py``; databases get their tables only from
the migrations. A column, index or type changed in one and not the other works in the tests
that build nothing but a fresh head, and breaks every deployed outbox. So a fresh database is
upgraded to head on SQLite and on PostgreSQL, and Alembic's autogenerate must find nothing to
write.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from relay.outbox.engine import make_engine
from relay.outbox.migrate import upgrade
from relay.outbox.schema import metadata
from tests.support.services import Postgres

# - compare_type: a String(200) that became String(100) in one place only truncates or
#   refuses ids on deployed databases; Alembic compares each column's type as the database
#   reports it (UTCDateTime is compared through its DateTime impl, the SQLite variant of the
#   BigInteger ids as Integer there).
# - compare_server_default: neither side declares one (defaults are Python-side, in the
#   insert), so a server default that appears in a migration alone changes what a row written
#   by another tool gets; PostgreSQL's sequence default of an autoincrement id is not reported.
# Indexes and unique constraints are always compared, partial (WHERE) ones included.
OPTIONS: dict[str, Any] = {"compare_type": True, "compare_server_default": True}


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database no migration has run on yet."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'outbox.db'}"
    postgres: Postgres = request.getfixturevalue("postgres")
    return postgres.fresh(migrated=False)


def test_the_migrations_build_exactly_the_schema(empty_url: str) -> None:
    engine = make_engine(empty_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts=OPTIONS)
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == [], (
        "relay/outbox/schema.py and the migrations disagree; add a migration in "
        f"relay/outbox/migrations/versions for: {differences}"
    )
