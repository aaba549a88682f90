"""Edge cases of delivery and draining found in review, each on the real parts.

Leases that could end mid-request, attempts that never finish, responses httpx cannot read,
keys echoed back by an API, queue items a foreign writer got wrong, discards racing a send.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select, update

from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.errors import ConfigError, LimiterUnavailable
from relay.limiter import RedisLimiter
from relay.limiter.base import Grant
from relay.outbox import queries as outbox_admin
from relay.outbox.schema import attempts, outbox
from relay.outbox.store import utcnow
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.services import SECRETS


def rows(worker: Worker) -> dict[str, Any]:
    with worker.engine.connect() as conn:
        return {row.event_id: row for row in conn.execute(select(outbox))}


def enqueue(settings: Settings, destination: str, payloads: list[dict[str, Any]]) -> list[str]:
    enqueuer = Enqueuer(settings)
    try:
        ids, items = enqueuer.encode_many(destination, payloads)
        enqueuer.push(items)
    finally:
        enqueuer.close()
    return ids


def purchases(n: int) -> list[dict[str, Any]]:
    return [{"event_type": "purchase", "value": float(i)} for i in range(n)]


# -- leases ------------------------------------------------------------------------------


def test_lease_must_outlast_a_request(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(lease_seconds=4.0, connect_timeout=1.0, read_timeout=2.0)
    with pytest.raises(ConfigError) as info:
        Worker(settings)
    message = str(info.value)
    assert "RELAY_LEASE_SECONDS (4) must be at least twice" in message
    assert "RELAY_CONNECT_TIMEOUT + RELAY_READ_TIMEOUT (3)" in message


def test_a_slow_round_releases_rows_whose_lease_is_running_out(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    """One thread, a 0.6 s API and 12 rows claimed: the rows the round reaches after their
    lease has less than one request's worth left go back unsent instead of out late."""
    settings = make_settings(
        lease_seconds=5.0, read_timeout=2.0, send_concurrency=1, dispatch_batch=12
    )
    ids = enqueue(settings, "servoki", purchases(12))
    sandbox.set_faults(latency_ms=600)
    worker = Worker(settings)
    try:
        worker.drain()
        report = worker.dispatch()
        assert report.claimed == 12
        assert 1 <= report.delivered <= 6 and report.held == 12 - report.delivered
        sent = {e["body"]["event_id"] for e in sandbox.events("servoki")}
        held = [row for row in rows(worker).values() if row.status == "pending"]
        assert len(held) == report.held and not {row.event_id for row in held} & sent
        # Given back as they were: no attempt used, due at once, no lease.
        assert all(row.attempts == 0 and row.lease_token is None for row in held)
        sandbox.clear_faults()
        assert worker.flush(max_wait=5).exit_code == 0
    finally:
        worker.close()
    sent_ids = [e["body"]["event_id"] for e in sandbox.events("servoki")]
    assert sorted(sent_ids) == sorted(ids)  # every event once


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


# -- responses the relay must survive ------------------------------------------------------


class Misbehaving(BaseHTTPRequestHandler):
    """A loopback API that answers badly: a gzip body that is not gzip, or echoes the key."""

    mode = "bad-gzip"
    seen: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).seen.append(self.path)
        if type(self).mode == "bad-gzip":
            body = b"this is not gzip"
            self.send_response(202)
            self.send_header("Content-Encoding", "gzip")
        else:
            echoed = f"bad request; you sent Authorization: {self.headers['Authorization']}"
            body = json.dumps({"error": echoed}).encode()
            self.send_response(400)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def misbehaving() -> Iterator[tuple[str, type[Misbehaving]]]:
    handler = type("Handler", (Misbehaving,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


def test_an_unreadable_response_is_a_retry_and_the_round_goes_on(
    make_settings: Callable[..., Settings],
    misbehaving: tuple[str, type[Misbehaving]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, handler = misbehaving
    settings = make_settings(servoki_url=url, max_attempts=2, send_concurrency=2)
    ids = enqueue(settings, "servoki", purchases(3))
    worker = Worker(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="relay.delivery"):
            report = worker.flush(max_wait=5)
        found = rows(worker)
    finally:
        worker.close()
    assert len(handler.seen) == 6  # every event, both attempts: no round was lost
    assert report.dispatched.dead == 3 and report.dispatched.retried == 3
    for event_id in ids:
        error = found[event_id].last_error
        assert "gave up after 2 attempts" in error and "unexpected error: DecodingError" in error
    assert "failed unexpectedly" in caplog.text  # logged with its traceback, not swallowed


def test_a_key_echoed_in_a_response_is_never_stored_or_logged(
    make_settings: Callable[..., Settings],
    misbehaving: tuple[str, type[Misbehaving]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, handler = misbehaving
    handler.mode = "echo"
    settings = make_settings(servoki_url=url, datalook_url=url)
    enqueue(settings, "servoki", purchases(1))
    enqueue(settings, "datalook", [{"event_name": "pageview", "page_path": "/"}])
    worker = Worker(settings)
    try:
        with caplog.at_level(logging.DEBUG):
            assert worker.flush(max_wait=5).exit_code == 1
        with worker.engine.connect() as conn:
            stored = [str(row) for row in conn.execute(select(outbox))]
            stored += [str(row) for row in conn.execute(select(attempts))]
    finally:
        worker.close()
    assert len(handler.seen) == 2
    text = "\n".join(stored) + caplog.text
    assert "Authorization: Bearer ***" in text
    for secret in SECRETS:
        assert secret not in text


# -- the limiter failing between reserve and send -------------------------------------------


class RefundFails(RedisLimiter):
    """The real limiter, except that Redis "goes away" when unused slots are handed back."""

    def refund(self, grant: Grant, unused: int) -> None:
        raise LimiterUnavailable("the limiter's Redis went away (test)")


def test_claims_go_back_when_the_limiter_fails_mid_plan(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(datalook_api_key=None)  # servoki's plan is the round's first
    [event_id] = enqueue(settings, "servoki", purchases(1))
    worker = Worker(settings)
    worker.limiter = worker.dispatcher.limiter = RefundFails(
        worker.redis, worker.keys, worker.build_limiter().budgets
    )
    try:
        worker.drain()
        with pytest.raises(LimiterUnavailable):
            worker.dispatch()  # reserves 50 slots, claims 1, the refund of 49 fails
        row = rows(worker)[event_id]
    finally:
        worker.close()
    assert row.status == "pending" and row.lease_token is None and row.attempts == 0
    assert sandbox.events("servoki") == []


# -- queue items a foreign writer got wrong --------------------------------------------------


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


# -- operators --------------------------------------------------------------------------------


def test_an_operator_retry_gives_a_fresh_age_budget(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    """An event dead of old age (a long outage) gets its full attempts again when retried,
    not a single attempt that the age limit ends at once."""
    settings = make_settings(max_age_seconds=600, max_attempts=3)
    [event_id] = enqueue(settings, "servoki", purchases(1))
    worker = Worker(settings)
    try:
        worker.drain()
        with worker.engine.begin() as conn:
            conn.execute(update(outbox).values(enqueued_at=utcnow() - timedelta(hours=4)))
        sandbox.set_faults(outage=True)
        worker.flush(max_wait=5)
        row = rows(worker)[event_id]
        assert row.status == "dead" and row.attempts == 1
        assert "(RELAY_MAX_AGE_SECONDS=600)" in row.last_error

        assert outbox_admin.retry(worker.engine, ids=[row.id]) == 1
        worker.flush(max_wait=5)
        row = rows(worker)[event_id]
        assert row.status == "dead" and row.attempts == 3  # all its attempts, then dead
        assert "gave up after 3 attempts" in row.last_error
        assert row.retried_at is not None and row.retried_at > row.enqueued_at

        sandbox.clear_faults()
        assert outbox_admin.retry(worker.engine, ids=[row.id]) == 1
        assert worker.flush(max_wait=5).exit_code == 0
    finally:
        worker.close()


# -- operators racing workers ------------------------------------------------------------------


def test_discard_leaves_a_row_being_sent_alone(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, db_url: str
) -> None:
    settings = make_settings()
    [sending, idle] = enqueue(settings, "servoki", purchases(2))
    worker = Worker(settings)
    try:
        worker.drain()
        [claim] = worker.outbox.claim_due(1, 60.0, ["servoki"])
        assert claim.event_id == sending
        ids = [row.id for row in rows(worker).values()]
        assert outbox_admin.discard(worker.engine, ids=ids) == 1
        found = rows(worker)
        assert found[sending].status == "pending" and found[idle].status == "discarded"
        # Its send finishes and is recorded as it happened.
        assert worker.dispatcher.deliver(claim)[1] is True
        assert rows(worker)[sending].status == "delivered"
        # A lease that ran out (its worker died) no longer protects the row.
        with worker.engine.begin() as conn:
            conn.execute(
                update(outbox)
                .where(outbox.c.event_id == sending)
                .values(status="pending", lease_token="gone", next_attempt_at=utcnow())
            )
        assert outbox_admin.discard(worker.engine, ids=ids) == 1
    finally:
        worker.close()
