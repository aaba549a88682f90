"""One request per event at a time: total deadlines, undocumented answers, refusals.

The sandbox counts a request that arrives while another for the same event is still open
(``overlapping``): the relay promises there is never one.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from relay.destinations import HttpRequest
from relay.destinations.outcome import Outcome
from relay.dev.sandbox import SandboxProcess
from relay.limiter import RedisLimiter
from relay.ops.admin import Admin
from relay.outbox.schema import outbox
from relay.outbox.store import Claim, utcnow
from relay.settings import Settings
from relay.worker.delivery import Round
from relay.worker.loop import Worker
from tests.support.faults import start_pump
from tests.support.pipeline import enqueue, purchases, rows

pytestmark = pytest.mark.slow


def statuses(worker: Worker) -> Counter[str]:
    with worker.engine.connect() as conn:
        return Counter(conn.execute(select(outbox.c.status)).scalars())


# -- 1. one total deadline per request, inside the lease ---------------------------------


def test_a_body_trickling_past_the_lease_never_leaves_two_requests_open(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess, tmp_path: Path
) -> None:
    """202 at once, then a body that takes longer than the lease: the request ends by its
    deadline (inside the lease), so the other worker never sends the event meanwhile."""
    settings = make_settings(
        lease_seconds=5.0, connect_timeout=0.5, read_timeout=2.0, send_concurrency=2
    )
    ids = enqueue(settings, "servoki", [{"event_type": "purchase", "value": i} for i in range(6)])
    sandbox.set_faults(trickle_ms=8000, apis=["servoki"])
    logs = tmp_path / "pumps.log"
    pumps = [start_pump(settings, 14, logs) for _ in range(2)]
    try:
        for pump in pumps:
            pump.wait(60)
    finally:
        for pump in pumps:
            if pump.poll() is None:
                pump.kill()
    stats = sandbox.stats()["servoki"]
    assert stats["overlapping"] == 0, logs.read_text()[-3000:]
    assert {e["body"]["event_id"] for e in sandbox.events("servoki")} == set(ids)
    assert stats["requests"] == len(ids)  # the 202 arrived: each one delivered, once
    worker = Worker(settings)
    try:
        assert statuses(worker) == {"delivered": len(ids)}
    finally:
        worker.close()


def test_a_held_outcome_gives_up_before_the_lease_ends(
    make_settings: Callable[..., Settings],
) -> None:
    """Holding an outcome while the outbox fails ends before the claim's lease does: after
    it, another worker may claim the row while the outcome still waits."""
    worker = Worker(make_settings(lease_seconds=6.0))
    dispatcher = worker.dispatcher
    dispatcher.record_patience = 30.0
    claim = Claim(
        id=1,
        destination="servoki",
        event_id="e-1",
        payload={},
        attempts=1,
        enqueued_at=utcnow(),
        lease_token="token",
        lease_deadline=time.monotonic() + 2.0,
    )

    def restarting(*_: object, **__: object) -> bool:
        raise OperationalError("UPDATE relay_outbox", {}, Exception("the database restarts"))

    dispatcher.record = restarting  # type: ignore[method-assign]
    started = time.monotonic()
    try:
        with pytest.raises(OperationalError):
            dispatcher._persist(claim, Outcome.delivered(202), False, Round())
    finally:
        worker.close()
    assert time.monotonic() - started < 2.0  # inside the lease, not the 30 s patience


# -- 3. only the documented answer is a delivery ------------------------------------------


def test_a_website_at_the_url_pauses_the_destination_and_loses_nothing(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(pause_probe_seconds=60)
    ids = enqueue(
        settings, "datalook", [{"event_name": "click", "page_path": f"/{i}"} for i in range(20)]
    )
    sandbox.set_faults(misdirect_status=200, apis=["datalook"])
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=1)
        assert report.exit_code == 2 and "datalook" in report.paused
        reason = report.paused["datalook"]
        assert reason.startswith(
            f"RELAY_DATALOOK_URL ({sandbox.url}) answered HTTP 200 (text/html; charset=utf-8), "
            "not the datalook API's 204: nothing was delivered"
        )
        assert statuses(worker) == {"pending": 20}
        # The round stopped at once: only the requests already in flight went out.
        assert sandbox.stats()["datalook"]["requests"] <= settings.send_concurrency
        # The URL is fixed (here: the site answers like the API again); resume sends them all.
        sandbox.clear_faults()
        admin = Admin(settings)
        try:
            assert admin.resume("datalook") == (True, 20)
        finally:
            admin.close()
        assert worker.flush(max_wait=5).exit_code == 0
        assert statuses(worker) == {"delivered": 20}
    finally:
        worker.close()
    assert sandbox.stats()["datalook"]["accepted"] == len(ids)


def test_a_redirect_is_not_followed_and_pauses(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(pause_probe_seconds=60)
    enqueue(settings, "servoki", [{"event_type": "purchase"}])
    sandbox.set_faults(misdirect_status=301, apis=["servoki"])
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=1)
    finally:
        worker.close()
    assert (
        "answered HTTP 301 (text/html; charset=utf-8, to https://www.example.com/)"
        in (report.paused["servoki"])
    )


# -- 4. a refusal stops the round; a probe does not undo an operator ----------------------


def test_a_refused_key_stops_the_round_at_once(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(send_concurrency=1, dispatch_batch=50, pause_probe_seconds=60)
    enqueue(
        settings, "datalook", [{"event_name": "click", "page_path": f"/{i}"} for i in range(40)]
    )
    sandbox.revoke(settings.datalook_api_key.get_secret_value())  # type: ignore[union-attr]
    worker = Worker(settings)
    try:
        worker.drain()
        report = worker.dispatch()
        assert report.claimed == 40 and "datalook" in report.paused
        assert report.held == 39
        with worker.engine.connect() as conn:
            attempts = set(conn.execute(select(outbox.c.attempts)).scalars())
    finally:
        worker.close()
    assert sandbox.stats()["datalook"]["requests"] == 1  # was 40: one per claimed row
    assert attempts == {0}  # given back unsent, attempts refunded


def test_a_delivered_probe_does_not_lift_an_operators_pause(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    settings = make_settings(pause_probe_seconds=0.2)
    enqueue(settings, "servoki", [{"event_type": "purchase", "value": i} for i in range(3)])
    key = settings.servoki_api_key.get_secret_value()  # type: ignore[union-attr]
    sandbox.revoke(key)
    worker = Worker(settings)
    admin = Admin(settings)
    try:
        assert worker.flush(max_wait=0).paused  # the relay paused it: the key is refused
        sandbox.unrevoke(key)
        sandbox.set_faults(latency_ms=1500, apis=["servoki"])
        time.sleep(0.3)  # the probe is due
        probing = threading.Thread(target=worker.dispatch)
        probing.start()
        time.sleep(0.5)  # the probe is in flight
        admin.pause("servoki", "key rotation in progress")
        probing.join(10)
        paused = admin.pauses()
        assert sandbox.stats()["servoki"]["accepted"] == 1  # the probe was delivered
        assert paused["servoki"]["by"] == "operator"
        assert paused["servoki"]["reason"] == "key rotation in progress"
    finally:
        admin.close()
        worker.close()


# -- 7. the rate limit's margin measures what the API sees --------------------------------


def slow_first_build(worker: Worker, seconds: float) -> list[float]:
    """Building the worker's first Servoki request takes ``seconds``; returns the times
    each request was built."""
    destination = worker.dispatcher.destinations["servoki"]
    build = destination.build_request
    calls: list[float] = []

    def slow_first(body: bytes) -> HttpRequest:
        calls.append(time.monotonic())
        if len(calls) == 1:
            time.sleep(seconds)
        return build(body)

    destination.build_request = slow_first  # type: ignore[method-assign]
    return calls


def test_a_request_later_than_its_slot_at_the_first_byte_waits_for_a_fresh_slot(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    """Lateness is measured right before the request is written: a request held up after
    its slot (here: building it took 0.2 s) is called off unsent and takes a fresh slot."""
    settings = make_settings(servoki_rate_limit="10/1s", limit_jitter=0.1, send_concurrency=1)
    enqueue(settings, "servoki", [{"event_type": "purchase"}])
    worker = Worker(settings)
    calls = slow_first_build(worker, 0.2)  # past the 0.05 s the budget allows after a slot
    try:
        worker.drain()
        report = worker.dispatch()
        limiter = worker.limiter
        assert isinstance(limiter, RedisLimiter)
        late = list(limiter.stats.write_late)
        missed = limiter.stats.missed
    finally:
        worker.close()
    assert report.delivered == 1 and len(calls) == 2
    assert sandbox.stats()["servoki"]["requests"] == 1  # the late attempt wrote nothing
    assert missed >= 1
    assert len(late) == 1 and 0 <= late[0] <= limiter.late_margin


def test_rows_whose_slot_passed_before_their_turn_go_to_the_next_round(
    make_settings: Callable[..., Settings], sandbox: SandboxProcess
) -> None:
    """One request holds up the round (building it took 0.3 s): the rows queued behind it
    find their slots gone. They go back, attempt refunded, and the next round reserves fresh
    slots for them at once, instead of each waiting in the sending thread for a slot of its
    own (which made the rows behind it late too, one after another)."""
    settings = make_settings(servoki_rate_limit="20/1s", limit_jitter=0.1, send_concurrency=1)
    ids = enqueue(settings, "servoki", purchases(4))
    worker = Worker(settings)
    slow_first_build(worker, 0.3)
    try:
        worker.drain()
        first = worker.dispatch()
        behind = worker.dispatcher.slots_fell_behind
        between = rows(worker)
        second = worker.dispatch()
    finally:
        worker.close()
    assert first.claimed >= 2 and first.delivered == 1
    assert behind == first.held == first.claimed - 1
    given_back = [between[i] for i in ids if between[i].status == "pending"]
    assert len(given_back) == 3
    assert all(row.lease_token is None and row.attempts == 0 for row in given_back)
    assert first.delivered + second.delivered == first.claimed
    assert sandbox.stats()["servoki"]["requests"] == first.claimed  # one request per row


# -- a round that runs late --------------------------------------------------------------------


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
