"""A queue item the outbox database refuses is quarantined alone; its batch goes on.

Foreign writers (another service pushing to the queue, a bug in an old client) can put items
on the queue that parse but that the database will not store: a NUL in a PostgreSQL text
column, an id that is not valid UTF-8. Such an item must not hold its batch, or the batch of
the next worker the reaper hands it to. Neither may an item with an absurd stamp or JSON that
is not JSON (NaN, a lone surrogate): the first is taken with its age counted from now, the
second quarantined.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta

import redis
from sqlalchemy import func, select

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.keys import Keys
from relay.outbox.schema import outbox
from relay.outbox.store import utcnow
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.pipeline import rows


def foreign_item(event_id_json: str) -> bytes:
    """A queue item as another writer made it, its id given as raw JSON text (the payload
    itself is fine: only the id is poison)."""
    body = '{"site":"example.com","event_type":"purchase"}'
    return (
        '{"v":1,"d":"servoki","id":' + event_id_json + f',"t":{time.time()},"p":{body}}}'
    ).encode()


def test_poison_items_in_large_batches_are_quarantined_alone(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    settings = make_settings(batch_size=500)
    enqueuer = Enqueuer(settings)
    good: list[str] = []
    items: list[bytes] = []
    for i in range(900):
        event_id, item = enqueuer.encode("servoki", {"event_type": "purchase", "value": i})
        good.append(event_id)
        items.append(item)
    enqueuer.close()
    surrogate = foreign_item('"order\\ud800x"')  # a lone surrogate: UTF-8 cannot carry it
    nul = foreign_item('"order\\u0000x"')  # PostgreSQL text cannot hold NUL
    # Both poison items sit in the middle of the first batch, and one in the second.
    items[137:137] = [surrogate]
    items[389:389] = [nul]
    items[700:700] = [surrogate.replace(b"order", b"later")]
    client = redis.Redis.from_url(settings.resolved_redis_url)
    keys = Keys(settings.namespace)
    client.rpush(keys.queue, *items)

    worker = Worker(settings)
    try:
        first = worker.drain()
        second = worker.drain()
        assert client.llen(worker.queue.processing) == 0  # nothing left for the reaper
        report = worker.flush(max_wait=5)
        with worker.engine.connect() as conn:
            stored = conn.execute(select(func.count()).select_from(outbox)).scalar_one()
    finally:
        worker.close()
    postgres = db_url.startswith("postgresql")
    assert first.taken == 500 and second.taken == 403
    assert first.quarantined == (2 if postgres else 1) and second.quarantined == 1
    assert first.inserted == 500 - first.quarantined
    assert stored == 903 - first.quarantined - second.quarantined
    assert report.exit_code == 0
    delivered = {e["body"].get("event_id") for e in sandbox.events("servoki")}
    assert set(good) <= delivered

    entries = [json.loads(raw) for raw in client.lrange(keys.quarantine, 0, -1)]
    reasons = sorted(entry["reason"] for entry in entries)
    assert len(entries) == first.quarantined + second.quarantined
    surrogate_reason = (
        "the outbox database refused it: UnicodeEncodeError: 'utf-8' codec can't encode "
        "character '\\ud800' in position 5: surrogates not allowed"
    )
    assert reasons.count(surrogate_reason) == 2
    if postgres:
        assert (
            "the outbox database refused it: DataError: PostgreSQL text fields cannot contain "
            "NUL (0x00) bytes"
        ) in reasons
    assert int(client.get(keys.quarantined_total) or 0) == len(entries)
    client.close()


def test_an_outage_is_not_poison(make_settings: Callable[..., Settings], db_url: str) -> None:
    """A database that is down refuses every batch: that must stay an error to wait out,
    never a reason to quarantine good events."""
    settings = make_settings()
    enqueuer = Enqueuer(settings)
    _, items = enqueuer.encode_many("servoki", [{"event_type": "purchase"}] * 3)
    enqueuer.push(items)
    enqueuer.close()
    worker = Worker(settings)
    try:
        with worker.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE relay_attempts")
            conn.exec_driver_sql("ALTER TABLE relay_outbox RENAME TO relay_outbox_away")
        try:
            worker.drain()
        except Exception as exc:  # the database's own error, raised to the pump's backoff
            assert "relay_outbox" in str(exc)
        else:
            raise AssertionError("a missing table was taken for poison")
        assert worker.redis.llen(worker.queue.processing) == 3  # kept for the next try
        assert worker.redis.llen(worker.keys.quarantine) == 0
    finally:
        worker.close()


# -- items a foreign writer got wrong in their stamp or JSON -----------------------------------


def test_odd_queue_items_never_block_the_drain(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    settings = make_settings()
    good = {"site": "example.com", "event_type": "purchase"}

    def item(event_id: str, stamp: object, payload: object = good) -> bytes:
        return json.dumps({"v": 1, "d": "servoki", "id": event_id, "t": stamp, "p": payload})

    raw = [
        item("far-future", 1e20),
        item("far-past", -1e20),
        b'{"v":1,"d":"servoki","id":"nan","t":1,"p":{"site":"example.com","value":NaN}}',
        b'{"v":1,"d":"servoki","id":"surrogate","t":1,"p":{"event_type":"\\ud800"}}',
        item("plain", 1_700_000_000.5, {**good, "event_id": "plain"}),
    ]
    enqueuer = Enqueuer(settings)
    enqueuer.push([r if isinstance(r, bytes) else r.encode() for r in raw])
    enqueuer.close()
    worker = Worker(settings)
    try:
        report = worker.drain()
        found = rows(worker)
        poison = [
            json.loads(e)["reason"] for e in worker.redis.lrange(worker.keys.quarantine, 0, -1)
        ]
    finally:
        worker.close()
    assert report.taken == 5 and report.inserted == 3 and report.quarantined == 2
    assert set(found) == {"far-future", "far-past", "plain"}
    now = utcnow()
    for event_id in ("far-future", "far-past"):  # absurd stamps: the age counts from now
        assert abs(found[event_id].enqueued_at.replace(tzinfo=now.tzinfo) - now) < timedelta(
            minutes=1
        )
    assert any("NaN is not a JSON value" in r for r in poison)
    assert any("not valid UTF-8 text" in r for r in poison)
