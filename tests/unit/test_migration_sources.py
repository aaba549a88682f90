"""Each Alembic migration is history: it imports nothing from the live application.

A migration that imported ``relay.outbox.schema`` (a column type, a constant) would change
what it creates whenever schema.py changes, and an old database upgraded later would get
today's table from yesterday's revision. ``tests/integration/test_migrations.py`` proves the
head they build still matches schema.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from relay.outbox.migrate import MIGRATIONS

VERSIONS = sorted((MIGRATIONS / "versions").glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    modules: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
    return modules


def test_there_are_migrations_to_check() -> None:
    assert len(VERSIONS) >= 4


@pytest.mark.parametrize("path", VERSIONS, ids=lambda p: p.name)
def test_a_migration_imports_only_alembic_and_sqlalchemy(path: Path) -> None:
    roots = {module.split(".")[0] for module in imported_modules(path)}
    assert roots <= {"__future__", "alembic", "sqlalchemy"}, f"{path.name} imports {roots}"
