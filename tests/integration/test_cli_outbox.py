"""`relay outbox …` on both databases, over rows made by real deliveries to the sandbox."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.outbox.engine import make_engine
from relay.outbox.schema import attempts, outbox
from relay.outbox.store import utcnow
from relay.settings import Settings
from tests.support.cli_state import UNKNOWN_SITE, State, build
from tests.support.services import DATALOOK_KEY

ROW_FIELDS = {
    "event_id", "destination", "status", "attempts", "last_status", "last_error", "created_at",
    "updated_at", "delivered_at", "next_attempt_at", "enqueued_at", "reason",
    "retried_at",
}  # fmt: skip


@pytest.fixture
def state(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> Iterator[State]:
    sites = sandbox.configure()["sites"]
    yield build(make_settings(), sandbox)
    sandbox.configure(sites=sites)


def ids(rows: list[dict[str, object]]) -> set[object]:
    return {row["event_id"] for row in rows}


def test_list_filters_and_json(state: State) -> None:
    everything = state.json("outbox", "list")
    assert len(everything) == 12
    assert all(set(row) == ROW_FIELDS for row in everything)
    changed = [row["updated_at"] for row in everything]
    assert changed == sorted(changed, reverse=True)  # most recently changed first
    assert ids(everything[:2]) == {"d-wait-0", "d-wait-1"}

    dead = state.json("outbox", "list", "--status", "dead")
    assert {(r["event_id"], r["last_status"], r["reason"]) for r in dead} == {
        ("s-404-0", 404, "HTTP 404"),
        ("s-404-1", 404, "HTTP 404"),
        ("d-400", 400, "HTTP 400"),
    }
    assert all(r["attempts"] == 1 and "created_at" in r for r in dead)
    assert "unknown site" in dead[0]["last_error"] or "page_path" in dead[0]["last_error"]
    assert ids(state.json("outbox", "list", "-s", "dead", "-d", "servoki")) == {
        "s-404-0",
        "s-404-1",
    }
    assert ids(state.json("outbox", "list", "--reason", "404")) == {"s-404-0", "s-404-1"}
    assert ids(state.json("outbox", "list", "--reason", "HTTP 400")) == {"d-400"}
    assert ids(state.json("outbox", "list", "--reason", "PAGE_PATH")) == {"d-400"}
    pending = state.json("outbox", "list", "--status", "pending")
    assert ids(pending) == {"d-wait-0", "d-wait-1"}
    # The first 401 stops the round: a row not yet in flight goes back unsent (no status).
    assert 401 in {r["last_status"] for r in pending} <= {401, None}
    assert all(r["next_attempt_at"] for r in pending)
    delivered = state.json("outbox", "list", "--status", "delivered", "--destination", "datalook")
    assert ids(delivered) == {"d-ok-0", "d-ok-1", "d-ok-2"}
    assert all(r["delivered_at"] and r["last_status"] == 204 for r in delivered)
    assert len(state.json("outbox", "list", "--since", "1h")) == 12
    assert state.json("outbox", "list", "--status", "delivered", "--since", "0s") == []
    assert len(state.json("outbox", "list", "--limit", "3")) == 3

    table = state.cli("outbox", "list", "--status", "dead").stdout
    assert "s-404-0" in table and "d-400" in table and "unknown site" in table
    assert "3 row(s), most recently changed first" in table


def test_show_payload_attempts_and_timestamps(state: State) -> None:
    shown = state.json("outbox", "show", "s-404-0")
    assert shown["payload"]["site"] == UNKNOWN_SITE
    assert shown["payload"]["event_id"] == "s-404-0"
    assert shown["status"] == "dead" and shown["created_at"] and shown["updated_at"]
    assert [(a["attempt"], a["status"], a["verdict"]) for a in shown["history"]] == [
        (1, 404, "dead")
    ]
    assert "unknown site" in shown["history"][0]["detail"]
    waiting = state.json("outbox", "show", "d-wait-0", "--destination", "datalook")
    assert [(a["status"], a["verdict"]) for a in waiting["history"]] == [(401, "pause")]
    assert state.json("outbox", "show", "d-ok-1")["history"][0]["verdict"] == "delivered"

    text = state.cli("outbox", "show", "s-404-0").stdout
    assert "servoki / s-404-0" in text and '"site": "unknown.example"' in text
    assert "unknown site" in text and "dead" in text

    missing = state.cli("outbox", "show", "no-such-id", code=2)
    assert "no outbox row has event id 'no-such-id'" in missing.stderr


def test_retry_then_deliver(state: State, sandbox: SandboxProcess) -> None:
    sandbox.configure(sites=[*sandbox.configure()["sites"], UNKNOWN_SITE])
    # Bulk retries ask first; without an answer nothing changes.
    refused = state.cli("outbox", "retry", "--all-dead", "-d", "servoki", input="", code=1)
    assert "retry 2 dead event(s) of servoki?" in refused.stderr
    assert len(state.json("outbox", "list", "--status", "dead")) == 3

    result = state.cli("outbox", "retry", "s-404-0", "s-404-1", "s-ok-0")
    assert "retried 2 event(s)" in result.stdout
    assert "skipped s-ok-0 (servoki): it is delivered" in result.stderr
    again = state.json("outbox", "list", "--status", "pending", "-d", "servoki")
    assert ids(again) == {"s-404-0", "s-404-1"} and {r["attempts"] for r in again} == {0}

    state.flush(max_wait=0)
    delivered = {e["body"]["event_id"] for e in sandbox.events("servoki")}
    assert {"s-404-0", "s-404-1"} <= delivered
    shown = state.json("outbox", "show", "s-404-1")
    assert shown["status"] == "delivered"
    assert [a["verdict"] for a in shown["history"]] == ["dead", "delivered"]

    assert state.json("outbox", "retry", "--all-dead", "--reason", "400", "--yes") == {
        "retried": 1,
        "skipped": [],
        "left_alone": 0,
    }
    assert ids(state.json("outbox", "list", "-s", "pending", "-d", "datalook")) == {
        "d-400", "d-wait-0", "d-wait-1",
    }  # fmt: skip


def test_discard_and_prune(state: State) -> None:
    assert state.json("outbox", "discard", "d-400", "--yes") == {
        "discarded": 1,
        "skipped": [],
        "left_alone": 0,
    }
    refused = state.cli("outbox", "discard", "--all-dead", input="n\n", code=1)
    assert "discard 2 dead event(s)?" in refused.stderr
    done = state.cli("outbox", "discard", "--all-dead", input="y\n")
    assert "discarded 2 event(s)" in done.stdout
    assert state.json("outbox", "list", "--status", "dead") == []
    assert len(state.json("outbox", "list", "--status", "discarded")) == 3

    assert "pruned 0 row(s)" in state.cli("outbox", "prune", "--older-than", "1h").stdout
    # Age the delivered Servoki rows and two discarded ones past the 7-day retention.
    engine = make_engine(state.settings.resolved_database_url)
    old = utcnow() - timedelta(days=8)
    with engine.begin() as conn:
        conn.execute(
            update(outbox)
            .where(outbox.c.event_id.in_(["s-ok-0", "s-ok-1", "s-ok-2", "s-ok-3", "s-404-0"]))
            .values(updated_at=old)
        )
        conn.execute(update(outbox).where(outbox.c.event_id == "d-wait-0").values(updated_at=old))
    refused = state.cli("outbox", "prune", input="n\n", code=1)
    assert "delete 5 delivered/discarded row(s) older than 7d 0h?" in refused.stderr
    assert state.json("outbox", "prune", "--yes", "--batch-size", "2") == {"pruned": 5}
    with engine.connect() as conn:
        left = set(conn.execute(select(outbox.c.event_id)).scalars())
        orphans = conn.execute(
            select(func.count())
            .select_from(attempts)
            .where(attempts.c.outbox_id.not_in(select(outbox.c.id)))
        ).scalar()
    engine.dispose()
    assert left == {"s-404-1", "d-ok-0", "d-ok-1", "d-ok-2", "d-400", "d-wait-0", "d-wait-1"}
    assert orphans == 0
    # Dedup holds within the retention window only: a pruned event id is a new event again.
    enqueuer = Enqueuer(state.settings)
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "purchase"}, "s-ok-0")[1]])
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "purchase"}, "s-404-1")[1]])
    enqueuer.close()
    state.flush(max_wait=0)
    assert state.json("outbox", "show", "s-ok-0")["status"] == "delivered"
    assert state.json("outbox", "show", "s-404-1")["status"] == "discarded"


def test_bad_arguments_are_clear(state: State, sandbox: SandboxProcess) -> None:
    result = state.cli("outbox", "list", "--destination", "nope", code=2)
    assert "unknown destination 'nope'; configured destinations: datalook, servoki" in result.stderr
    result = state.cli("outbox", "retry", "--all-dead", "-d", "nope", "--yes", code=2)
    assert "unknown destination 'nope'" in result.stderr
    result = state.cli("outbox", "retry", "s-404-0", "ghost-1", code=2)
    assert "no outbox row has event id 'ghost-1'" in result.stderr
    assert state.json("outbox", "show", "s-404-0")["status"] == "dead"  # nothing changed
    assert "one of the two" in state.cli("outbox", "retry", code=2).stderr
    assert (
        "use it with --all-dead"
        in state.cli("outbox", "retry", "x", "--reason", "404", code=2).stderr
    )
    result = state.cli("outbox", "list", "--since", "5 parsecs", code=2)
    assert "'5 parsecs' is not a duration" in result.stderr
    assert "'lost' is not one of" in state.cli("outbox", "list", "--status", "lost", code=2).stderr
    sandbox.unrevoke(DATALOOK_KEY)
