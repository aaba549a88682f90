"""Property-based, on the real parts: every valid payload reaches the API exactly as given
(plus the stamps), through Redis, the outbox and real HTTP; what enqueue() accepts, the outbox
stores on both databases. The properties of enqueue() alone (invalid payloads, odd values) are
in tests/unit/test_enqueue_properties.py."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import InvalidEvent
from relay.outbox.engine import make_engine
from relay.outbox.schema import outbox
from relay.outbox.store import Outbox
from relay.queue.wire import parse_items
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.payloads import datalook_payload, offline_enqueuer, servoki_payload

PII = re.compile("email|phone|password|ssn", re.IGNORECASE)  # documented by DataLook


def api_time(value: str | datetime) -> str:
    """What the API gets for ``occurred_at``: UTC, whole seconds, Z (computed independently)."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def enqueuer() -> Enqueuer:
    return offline_enqueuer()


@pytest.mark.slow
def test_valid_payloads_reach_the_api_unchanged(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    relay_settings = make_settings()
    enqueuer = Enqueuer(relay_settings)
    worker = Worker(relay_settings)
    try:

        @given(
            s_payloads=st.lists(
                servoki_payload,
                min_size=1,
                max_size=6,
                unique_by=lambda p: p.get("event_id", id(p)),
            ),
            d_payloads=st.lists(datalook_payload, min_size=1, max_size=6),
        )
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def round_trip(s_payloads: list[dict[str, Any]], d_payloads: list[dict[str, Any]]) -> None:
            sandbox.reset()
            # Ids seen in an earlier example are (rightly) deduplicated by the outbox.
            run = uuid.uuid4().hex[:8]
            s_payloads = [
                {**p, "event_id": f"{run}-{p['event_id']}"} if "event_id" in p else p
                for p in s_payloads
            ]
            s_ids, s_items = enqueuer.encode_many("servoki", s_payloads)
            _, d_items = enqueuer.encode_many("datalook", d_payloads)
            enqueuer.push(s_items + d_items)
            assert worker.flush(max_wait=5).exit_code == 0
            received = {e["body"]["event_id"]: e["body"] for e in sandbox.events("servoki")}
            for event_id, payload in zip(s_ids, s_payloads, strict=True):
                expected = {"site": "example.com", **payload, "event_id": event_id}
                if "occurred_at" in payload:
                    expected["occurred_at"] = api_time(payload["occurred_at"])
                else:
                    expected["occurred_at"] = received[event_id]["occurred_at"]
                assert received[event_id] == expected
            bodies = [e["body"] for e in sandbox.events("datalook")]
            expected_dl = [
                {**p, "properties": {k: v for k, v in p["properties"].items() if not PII.search(k)}}
                if "properties" in p
                else p
                for p in d_payloads
            ]
            assert sorted(map(repr, bodies)) == sorted(map(repr, expected_dl))

        round_trip()
    finally:
        worker.close()
        enqueuer.close()


# -- what enqueue() accepts, the outbox stores, on both databases --------------------------------

storable_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=10) | st.text(
    st.characters(max_codepoint=0x20), min_size=1, max_size=4
)


@given(
    events=st.lists(
        st.tuples(
            st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=190).filter(
                str.strip
            ),
            st.fixed_dictionaries(
                {"event_type": storable_text.filter(str.strip)},
                optional={
                    "vid": storable_text,
                    "props": st.dictionaries(storable_text, st.lists(storable_text), max_size=3),
                },
            ),
        ),
        min_size=1,
        max_size=5,
        unique_by=lambda pair: pair[0],
    )
)
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_what_enqueue_accepts_the_outbox_stores(
    db_url: str, enqueuer: Enqueuer, events: list[tuple[str, dict[str, Any]]]
) -> None:
    items = []
    for event_id, payload in events:
        try:
            items.append(enqueuer.encode("servoki", payload, event_id)[1])
        except InvalidEvent:
            assert "\x00" in event_id  # the only thing generated here that the outbox refuses
    batch = parse_items(items, frozenset({"servoki"}), 32 * 1024)
    engine = make_engine(db_url)
    try:
        # Each example runs on the same database: ids are made unique per example.
        run = uuid.uuid4().hex[:8]
        events_in = [replace(e, event_id=run + e.event_id) for e in batch.events]
        assert Outbox(engine).insert(events_in) == len(events_in)
        with engine.connect() as conn:
            rows = dict(conn.execute(select(outbox.c.event_id, outbox.c.payload)).all())
        for event in events_in:
            assert rows[event.event_id] == event.payload
    finally:
        engine.dispose()


ODD_BUT_STORABLE = "a\x00b\x01\x1f\x7f\u0085\u2028😀"


def test_nul_and_control_characters_inside_payloads_are_stored(
    db_url: str, enqueuer: Enqueuer
) -> None:
    payload = {
        "event_type": ODD_BUT_STORABLE,
        "vid": ODD_BUT_STORABLE,
        "props": {ODD_BUT_STORABLE: [ODD_BUT_STORABLE, {"k": ODD_BUT_STORABLE}]},
    }
    event_id, item = enqueuer.encode("servoki", payload, "order\x01\x1f\x7f😀")
    dl_id, dl_item = enqueuer.encode(
        "datalook",
        {"event_name": "click", "page_path": ODD_BUT_STORABLE, "properties": {"k\x00": "\x00"}},
    )
    batch = parse_items([item, dl_item], frozenset({"servoki", "datalook"}), 32 * 1024)
    engine = make_engine(db_url)
    try:
        assert Outbox(engine).insert(batch.events) == 2
        with engine.connect() as conn:
            rows = dict(conn.execute(select(outbox.c.event_id, outbox.c.payload)).all())
    finally:
        engine.dispose()
    assert rows[event_id] == json.loads(item)["p"]
    assert rows[event_id]["props"] == payload["props"]
    assert rows[dl_id]["properties"] == {"k\x00": "\x00"}


@pytest.mark.parametrize("event_id", ["order\x00 1", "order\ud800"])
def test_ids_enqueue_refuses_the_outbox_cannot_store(
    db_url: str, enqueuer: Enqueuer, event_id: str
) -> None:
    with pytest.raises(InvalidEvent, match=r"^servoki\.event_id must be a non-empty string"):
        enqueuer.encode("servoki", {"event_type": "p"}, event_id)
    # Written by hand (a foreign writer), the same id breaks the insert of its whole batch on
    # PostgreSQL (NUL in text) or on both databases (a lone surrogate is not UTF-8).
    _, item = enqueuer.encode("servoki", {"event_type": "p"}, "placeholder")
    (parsed,) = parse_items([item], frozenset({"servoki"}), 32 * 1024).events
    event = replace(parsed, event_id=event_id)
    engine = make_engine(db_url)
    try:
        if "\x00" in event_id and engine.dialect.name == "sqlite":
            assert Outbox(engine).insert([event]) == 1  # SQLite alone would take it
        else:
            with pytest.raises(Exception, match=r"NUL|surrogates not allowed"):
                Outbox(engine).insert([event])
    finally:
        engine.dispose()
