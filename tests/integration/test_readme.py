"""The README's framework code cannot rot: every Python block of "In your framework" is checked.

A block marked ``<!-- example: PATH -->`` must be a verbatim excerpt of that file, and those
apps are run by the suite (test_frameworks, test_web_servers, test_django). A block marked
``<!-- runs: NAME -->`` is run here. An unmarked Python block in that section fails the test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, Table, insert, select
from sqlalchemy.orm import Session

import relay
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.settings import Settings
from tests.support.services import ROOT

pytest_plugins = ["pytester"]

_BLOCK = re.compile(r"(?:<!-- (example|runs): ([^ ]+) -->\n)?```python\n(.*?)```", re.DOTALL)


def framework_blocks() -> list[tuple[str, str, str]]:
    """(kind, target, code) of each Python block in the README's "In your framework"."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## In your framework\n")
    section = text[start : text.index("\n## ", start + 1)]
    return [(kind, target, code) for kind, target, code in _BLOCK.findall(section)]


def test_the_section_has_marked_blocks_only() -> None:
    blocks = framework_blocks()
    assert len(blocks) >= 7
    unmarked = [code[:60] for kind, _, code in blocks if not kind]
    assert not unmarked, f"mark these README blocks as an example excerpt or a run: {unmarked}"
    assert {target for kind, target, _ in blocks if kind == "runs"} == {"transactional", "pytest"}


@pytest.mark.parametrize(
    "target, code",
    [(target, code) for kind, target, code in framework_blocks() if kind == "example"],
)
def test_example_blocks_are_excerpts_of_the_tested_apps(target: str, code: str) -> None:
    source = (ROOT / target).read_text()
    assert code in source, f"this README block is no longer in {target}:\n{code}"


def block(target: str) -> str:
    [code] = [code for kind, name, code in framework_blocks() if (kind, name) == ("runs", target)]
    return code


def test_the_transactional_block_runs(make_settings: Callable[..., Settings], db_url: str) -> None:
    settings = make_settings()
    relay.configure(settings)
    engine = make_engine(db_url)
    orders = Table(
        "orders", MetaData(), Column("id", Integer, primary_key=True), Column("paid", Boolean)
    )
    orders.create(engine)
    with engine.begin() as conn:
        conn.execute(insert(orders).values(id=42, paid=False))
    namespace: dict[str, Any] = {"Session": Session, "engine": engine, "orders": orders}
    namespace["relay"] = relay
    try:
        exec(compile(block("transactional"), "README.md", "exec"), namespace)
        with engine.connect() as conn:
            assert conn.execute(select(orders.c.paid)).scalar_one() is True
            rows = conn.execute(select(outbox.c.destination, outbox.c.event_id)).all()
        assert [tuple(row) for row in rows] == [("servoki", "order_42")]
    finally:
        engine.dispose()


def test_the_users_test_block_passes_under_pytest(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_shop=block("pytest"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error")
    result.assert_outcomes(passed=2)
