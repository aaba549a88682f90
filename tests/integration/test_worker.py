"""The worker end to end, on both databases: real Redis, real HTTP to the sandbox. Also its
leases (one must outlast a request) and attempts that never finish."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import select, update

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import ConfigError
from relay.outbox.schema import outbox
from relay.outbox.store import utcnow
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.pipeline import enqueue, purchases, rows
from tests.support.services import DATALOOK_KEY, SECRETS


class Relay:
    """An enqueuer and a worker sharing one test's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.enqueuer = Enqueuer(settings)
        self.worker = Worker(settings)

    def rows(self) -> dict[str, dict[str, Any]]:
        with self.worker.engine.connect() as conn:
            return {row.event_id: row._asdict() for row in conn.execute(select(outbox))}

    def close(self) -> None:
        self.worker.close()
        self.enqueuer.close()


@pytest.fixture
def make_relay(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Relay]]:
    made: list[Relay] = []

    def make(**overrides: Any) -> Relay:
        made.append(Relay(make_settings(**overrides)))
        return made[-1]

    yield make
    for item in made:
        item.close()


@pytest.fixture
def relay_(make_relay: Callable[..., Relay], db_url: str) -> Relay:
    return make_relay()


def servoki(n: int, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"event_type": "purchase", "value": 10.0 + i, "currency": "EUR", **extra} for i in range(n)
    ]


def datalook(n: int) -> list[dict[str, Any]]:
    return [
        {"event_name": "success", "name": "paid", "page_path": "/ok", "properties": {"n": i}}
        for i in range(n)
    ]


def test_delivers_both_apis_and_records_outcomes(relay_: Relay, sandbox: SandboxProcess) -> None:
    s_ids = relay_.enqueuer.encode_many("servoki", servoki(30))
    d_ids = relay_.enqueuer.encode_many("datalook", datalook(20))
    relay_.enqueuer.push(s_ids[1] + d_ids[1])
    report = relay_.worker.flush(max_wait=5)
    assert report.exit_code == 0
    assert report.dispatched.delivered == 50
    stats = sandbox.stats()
    assert stats["servoki"]["accepted"] == 30 and stats["datalook"]["accepted"] == 20
    rows = relay_.rows()
    assert {rows[i]["status"] for i in s_ids[0] + d_ids[0]} == {"delivered"}
    assert {rows[i]["last_status"] for i in s_ids[0]} == {202}
    assert {rows[i]["last_status"] for i in d_ids[0]} == {204}
    assert all(rows[i]["attempts"] == 1 and rows[i]["delivered_at"] for i in rows)
    # The API got exactly the validated body, event_id and occurred_at included.
    sent = {e["body"]["event_id"]: e["body"] for e in sandbox.events("servoki")}
    assert sent == {i: rows[i]["payload"] for i in s_ids[0]}
    assert sorted(e["body"]["properties"]["n"] for e in sandbox.events("datalook")) == list(
        range(20)
    )
    # Nothing of the keys was stored.
    dump = json.dumps(rows, default=str)
    assert not any(secret in dump for secret in SECRETS)


def test_same_event_id_twice_is_sent_once(relay_: Relay, sandbox: SandboxProcess) -> None:
    for _ in range(2):
        relay_.enqueuer.push([relay_.enqueuer.encode("servoki", servoki(1)[0], "order-1")[1]])
        relay_.enqueuer.push([relay_.enqueuer.encode("datalook", datalook(1)[0], "signup-1")[1]])
    report = relay_.worker.flush(max_wait=5)
    assert report.drained.taken == 4 and report.drained.duplicates == 2
    assert report.dispatched.delivered == 2
    stats = sandbox.stats()
    assert stats["servoki"]["accepted"] == 1 and stats["servoki"]["duplicates"] == 0
    assert stats["datalook"]["accepted"] == 1
    assert len(relay_.rows()) == 2


def test_racing_enqueues_of_one_id_deliver_once(relay_: Relay, sandbox: SandboxProcess) -> None:
    barrier = threading.Barrier(8)

    def racer() -> None:
        item = relay_.enqueuer.encode("datalook", datalook(1)[0], "race-1")[1]
        barrier.wait()
        relay_.enqueuer.push([item])

    threads = [threading.Thread(target=racer) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second = Worker(relay_.settings)  # two consumers drain the duplicates concurrently
    try:
        both = [
            threading.Thread(target=w.flush, kwargs={"max_wait": 5})
            for w in (relay_.worker, second)
        ]
        for thread in both:
            thread.start()
        for thread in both:
            thread.join()
    finally:
        second.close()
    assert sandbox.stats()["datalook"]["accepted"] == 1
    assert relay_.rows()["race-1"]["status"] == "delivered"


def test_400_and_404_go_dead_at_once_with_the_response(
    relay_: Relay, sandbox: SandboxProcess
) -> None:
    # The relay validates first, so a 400 only comes from an API stricter than its docs:
    # write a row the sandbox rejects straight into the queue to provoke one.
    bad = {
        "v": 1,
        "d": "servoki",
        "id": "bad-1",
        "t": 0,
        "p": {"site": "example.com", "event_type": ""},
    }
    relay_.enqueuer.push([json.dumps(bad).encode()])
    relay_.enqueuer.push(
        [
            relay_.enqueuer.encode(
                "servoki", {"event_type": "p", "site": "unknown.example"}, "nosite"
            )[1]
        ]
    )
    relay_.enqueuer.push([relay_.enqueuer.encode("servoki", servoki(1)[0], "fine")[1]])
    report = relay_.worker.flush(max_wait=5)
    assert report.exit_code == 1 and report.dispatched.dead == 2
    rows = relay_.rows()
    assert rows["bad-1"]["status"] == "dead" and rows["bad-1"]["last_status"] == 400
    assert "event_type" in rows["bad-1"]["last_error"]
    assert rows["nosite"]["status"] == "dead" and rows["nosite"]["last_status"] == 404
    assert rows["bad-1"]["attempts"] == rows["nosite"]["attempts"] == 1
    assert rows["fine"]["status"] == "delivered"


def test_401_pauses_the_destination_and_marks_nothing_dead(
    make_relay: Callable[..., Relay], sandbox: SandboxProcess, db_url: str
) -> None:
    relay_ = make_relay(pause_probe_seconds=0.3)
    sandbox.revoke(DATALOOK_KEY)
    relay_.enqueuer.push(relay_.enqueuer.encode_many("datalook", datalook(5))[1])
    relay_.enqueuer.push(relay_.enqueuer.encode_many("servoki", servoki(3))[1])
    report = relay_.worker.flush(max_wait=1)
    assert report.exit_code == 2 and "datalook" in report.paused
    rows = relay_.rows()
    assert {r["status"] for r in rows.values() if r["destination"] == "datalook"} == {"pending"}
    assert {r["status"] for r in rows.values() if r["destination"] == "servoki"} == {"delivered"}
    assert all(r["attempts"] == 0 for r in rows.values() if r["destination"] == "datalook")
    # Refused probes back off; once the key works again, a probe resumes the destination.
    sandbox.unrevoke(DATALOOK_KEY)
    report = relay_.worker.flush(max_wait=3)
    assert report.exit_code == 0, report
    assert sandbox.stats()["datalook"]["accepted"] == 5


def test_5xx_and_dropped_connections_are_retried(relay_: Relay, sandbox: SandboxProcess) -> None:
    sandbox.set_faults(error_rate=0.5, error_status=503, drop_rate=0.2, seed=7)
    ids = relay_.enqueuer.encode_many("servoki", servoki(40))
    relay_.enqueuer.push(ids[1])
    report = relay_.worker.flush(max_wait=5)
    assert report.exit_code == 0, report
    assert report.dispatched.retried > 0
    rows = relay_.rows()
    assert {r["status"] for r in rows.values()} == {"delivered"}
    assert sandbox.stats()["servoki"]["accepted"] == 40


def test_retries_end_dead_after_max_attempts(
    make_relay: Callable[..., Relay], sandbox: SandboxProcess, db_url: str
) -> None:
    relay_ = make_relay(max_attempts=3)
    sandbox.set_faults(outage=True)
    relay_.enqueuer.push([relay_.enqueuer.encode("servoki", servoki(1)[0], "doomed")[1]])
    report = relay_.worker.flush(max_wait=5)
    assert report.exit_code == 1
    row = relay_.rows()["doomed"]
    assert row["status"] == "dead" and row["attempts"] == 3 and row["last_status"] == 503
    assert "gave up after 3 attempts" in row["last_error"]


def test_each_destination_can_have_its_own_retry_policy(
    make_relay: Callable[..., Relay], sandbox: SandboxProcess, db_url: str
) -> None:
    relay_ = make_relay(max_attempts=4, retry={"servoki": {"max_attempts": 2}})
    sandbox.set_faults(outage=True)
    relay_.enqueuer.push(
        [
            relay_.enqueuer.encode("servoki", servoki(1)[0], "s-doomed")[1],
            relay_.enqueuer.encode("datalook", datalook(1)[0], "d-doomed")[1],
        ]
    )
    assert relay_.worker.flush(max_wait=5).exit_code == 1
    found = relay_.rows()
    assert found["s-doomed"]["attempts"] == 2 and found["d-doomed"]["attempts"] == 4
    assert (
        "gave up after 2 attempts ([retry.servoki] max_attempts=2)"
        in (found["s-doomed"]["last_error"])
    )
    assert "gave up after 4 attempts (RELAY_MAX_ATTEMPTS=4)" in found["d-doomed"]["last_error"]


def test_429_waits_for_retry_after_and_costs_no_attempt(
    relay_: Relay, sandbox: SandboxProcess
) -> None:
    sandbox.set_faults(force_429=1, retry_after=1)
    relay_.enqueuer.push([relay_.enqueuer.encode("servoki", servoki(1)[0], "slow")[1]])
    report = relay_.worker.flush(max_wait=5)
    assert report.exit_code == 0
    requests = sandbox.requests("servoki")
    assert [r["status"] for r in requests] == [429, 202]
    assert requests[1]["t"] - requests[0]["t"] >= 1.0
    assert relay_.rows()["slow"]["attempts"] == 1


def test_poison_items_are_quarantined_and_the_batch_delivered(
    relay_: Relay, sandbox: SandboxProcess
) -> None:
    good = relay_.enqueuer.encode_many("servoki", servoki(5))
    poison = [
        b"{not json",
        json.dumps({"v": 1, "d": "nowhere", "id": "x", "p": {}}).encode(),
        b"x" * 40000,
    ]
    relay_.enqueuer.push(good[1][:2] + poison + good[1][2:])
    report = relay_.worker.flush(max_wait=5)
    assert report.drained.quarantined == 3 and report.dispatched.delivered == 5
    keys = relay_.worker.keys
    redis_ = relay_.worker.redis
    assert int(redis_.get(keys.quarantined_total) or 0) == 3
    reasons = [json.loads(e)["reason"] for e in redis_.lrange(keys.quarantine, 0, -1)]
    assert any("not JSON" in r for r in reasons) and any(
        "unknown destination" in r for r in reasons
    )
    assert any("byte limit" in r for r in reasons)
    assert redis_.llen(keys.queue) == 0 and redis_.llen(relay_.worker.queue.processing) == 0
    assert relay_.worker.flush(max_wait=1).drained.taken == 0  # never looped on


def test_reaper_returns_a_dead_consumers_batch(relay_: Relay, sandbox: SandboxProcess) -> None:
    from relay.queue.consumer import Queue

    _, items = relay_.enqueuer.encode_many("servoki", servoki(10))
    relay_.enqueuer.push(items)
    crashed = Queue(
        relay_.worker.redis,
        relay_.worker.keys,
        heartbeat_seconds=0.2,
        known_destinations=frozenset({"servoki"}),
    )
    assert len(crashed.take(100)) == 10  # moved out of the queue, then the consumer "dies"
    assert relay_.worker.queue.length() == 0
    import time

    time.sleep(0.3)
    assert relay_.worker.queue.reap() == 10
    report = relay_.worker.flush(max_wait=5)
    assert report.dispatched.delivered == 10
    assert sandbox.stats()["servoki"]["accepted"] == 10


def test_redis_down_at_enqueue_writes_to_the_outbox(
    make_settings: Callable[..., Settings], db_url: str, sandbox: SandboxProcess
) -> None:
    import relay

    settings = make_settings()
    worker = Worker(settings)  # migrates / checks the outbox
    down = make_settings(redis_url="redis://127.0.0.1:9", namespace=settings.namespace)
    client = relay.configure(down)
    try:
        event_id = relay.enqueue("servoki", servoki(1)[0])
        report = worker.flush(max_wait=5)
        assert report.dispatched.delivered == 1
        assert [e["body"]["event_id"] for e in sandbox.events("servoki")] == [event_id]
        both_down = make_settings(
            redis_url="redis://127.0.0.1:9", database_url="postgresql+psycopg://u:pw@127.0.0.1:9/x"
        )
        relay.configure(both_down)
        with pytest.raises(relay.RelayUnavailable) as info:
            relay.enqueue("servoki", servoki(1)[0])
        message = str(info.value)
        assert "Redis at redis://127.0.0.1:9 failed" in message and "outbox database" in message
        assert "pw" not in message
    finally:
        client.close()
        worker.close()


def test_worker_warns_when_redis_can_lose_events(
    make_settings: Callable[..., Settings], caplog: pytest.LogCaptureFixture
) -> None:
    # The suite's Redis runs without AOF or RDB, as a careless production one might.
    worker = Worker(make_settings())
    worker.close()
    assert "Redis has neither AOF nor RDB persistence" in caplog.text


def test_refused_probes_back_off(make_settings: Callable[..., Settings]) -> None:
    from relay.limiter.pauses import Pauses

    worker = Worker(make_settings(pause_probe_seconds=10))
    try:
        pauses = Pauses(worker.redis, worker.keys, probe_seconds=10)
        pauses.pause("datalook", "HTTP 401", 401)
        pauses.pause("datalook", "HTTP 401", 401)  # same round: no change
        assert pauses.all()["datalook"]["interval"] == 10
        for expected in (20, 40, 80):
            pauses.pause("datalook", "HTTP 401", 401, probe=True)
            assert pauses.all()["datalook"]["interval"] == expected
        assert pauses.resume("datalook") and pauses.all() == {}
    finally:
        worker.close()


# -- leases and attempts -----------------------------------------------------------------------


def test_lease_must_outlast_a_request(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(lease_seconds=4.0, connect_timeout=1.0, read_timeout=2.0)
    with pytest.raises(ConfigError) as info:
        Worker(settings)
    message = str(info.value)
    assert "RELAY_LEASE_SECONDS (4) must be at least twice" in message
    assert "RELAY_CONNECT_TIMEOUT + RELAY_READ_TIMEOUT (3)" in message


def test_attempts_that_never_finish_still_run_out(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    """A row whose deliveries kept killing the worker (attempts counted at claim, no outcome
    ever written) ends dead without another request once its attempts are used up."""
    settings = make_settings(max_attempts=3)
    [doomed, fine] = enqueue(settings, "servoki", purchases(2))
    worker = Worker(settings)
    try:
        worker.drain()
        with worker.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.event_id == doomed)
                .values(attempts=3, lease_token="crashed", next_attempt_at=utcnow())
            )
        report = worker.flush(max_wait=5)
        found = rows(worker)
    finally:
        worker.close()
    assert report.exit_code == 1 and report.dispatched.dead == 1
    assert found[doomed].status == "dead" and found[doomed].last_status is None
    assert "gave up after 3 attempts (RELAY_MAX_ATTEMPTS=3)" in found[doomed].last_error
    assert "never finished" in found[doomed].last_error
    assert found[fine].status == "delivered"
    assert [e["body"]["event_id"] for e in sandbox.events("servoki")] == [fine]
