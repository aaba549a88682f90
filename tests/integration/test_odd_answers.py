"""Whatever an API answers can be recorded: one request, one outcome, never a resend loop.

A body with a NUL byte cannot go into a PostgreSQL text column; one that is not valid UTF-8,
or megabytes long, must not cost the worker either. Before these fixes a 400 with a NUL in it
failed the outcome's write, was held as if the database were restarting, and was sent again
after its lease: a 400 became 25 requests. A body that cannot be inflated (gzip that is not
gzip) does not hide the status; a send that fails unexpectedly is a retry like a network
error, and the round goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from relay.destinations.outcome import Outcome, Verdict
from relay.enqueue import Enqueuer
from relay.outbox.schema import attempts, outbox
from relay.settings import Settings
from relay.worker.delivery import UNSTORABLE, Round
from relay.worker.loop import Worker
from tests.support.apis import Misbehaving
from tests.support.pipeline import enqueue, purchases, rows

ANSWERS: dict[str, tuple[int, bytes]] = {
    "nul": (400, b'{"error":"bad value \x00 here","raw":"\xff\xfe\xfd"}'),
    "huge": (400, b"E" * (5 * 1024 * 1024)),
    "controls": (404, b"unknown site \x1b[31mred\x1b[0m\x07 \x7f end"),
}


class OddApi(BaseHTTPRequestHandler):
    mode = "nul"
    requests = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).requests += 1
        status, body = ANSWERS[type(self).mode]
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # The relay reads only the start of a huge body and hangs up.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def odd_api() -> Iterator[tuple[str, type[OddApi]]]:
    handler = type("Handler", (OddApi,), {"requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", sorted(ANSWERS))
def test_an_odd_answer_is_one_request_and_a_dead_row_that_shows_it(
    make_settings: Callable[..., Settings],
    odd_api: tuple[str, type[OddApi]],
    db_url: str,
    mode: str,
) -> None:
    url, handler = odd_api
    handler.mode = mode
    settings = make_settings(servoki_url=url, lease_seconds=6.0, read_timeout=2.0)
    enqueuer = Enqueuer(settings)
    event_id, item = enqueuer.encode("servoki", {"event_type": "purchase"})
    enqueuer.push([item])
    enqueuer.close()
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=8)  # past the lease: a lost outcome would resend
        with worker.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.event_id == event_id)).one()
            history = conn.execute(select(attempts)).all()
    finally:
        worker.close()
    assert handler.requests == 1
    assert report.dispatched.dead == 1 and report.dispatched.lost_leases == 0
    assert row.status == "dead" and row.last_status == ANSWERS[mode][0]
    assert [(a.verdict, a.status) for a in history] == [("dead", ANSWERS[mode][0])]
    shown = row.last_error
    assert "\x00" not in shown and len(shown) <= 2000
    if mode == "nul":
        assert shown.startswith('{"error":"bad value \\x00 here","raw":"\ufffd\ufffd\ufffd"}')
    elif mode == "huge":
        assert shown == "E" * 1999 + "…"
    else:
        assert shown == "unknown site \\x1b[31mred\\x1b[0m\\x07 \\x7f end"


def test_an_outcome_the_database_refuses_is_recorded_without_the_answer(
    make_settings: Callable[..., Settings], db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Past the sanitizing (a destination module's bug, say): a refusal for the data is
    recorded at once without the answer, not held as if the database were restarting."""
    settings = make_settings()
    enqueuer = Enqueuer(settings)
    enqueuer.push([enqueuer.encode("servoki", {"event_type": "purchase"})[1]])
    enqueuer.close()
    worker = Worker(settings)
    try:
        worker.drain()
        dispatcher = worker.dispatcher
        dispatcher.record_patience = 60.0  # long: holding would show as a slow test
        (claim,) = worker.outbox.claim_due(1, 60.0, ["servoki"])
        raw = Outcome(Verdict.DEAD, 400, "no \x00 and no \ud800 either")  # not sanitized
        assert dispatcher._persist(claim, raw, False, Round())
        with worker.engine.connect() as conn:
            row = conn.execute(select(outbox)).one()
    finally:
        worker.close()
    assert row.status == "dead" and row.last_status == 400
    assert row.last_error == UNSTORABLE
    assert "recording it without the API's answer" in caplog.text


# -- a body that cannot be read, and a send that fails unexpectedly -------------------------------


def test_a_body_that_cannot_be_inflated_does_not_hide_the_answer(
    make_settings: Callable[..., Settings], misbehaving: tuple[str, type[Misbehaving]]
) -> None:
    """A 202 whose body claims gzip and is not: the status line said accepted, so the event is
    delivered (sending it again would count it twice), its body kept with a note."""
    url, handler = misbehaving
    settings = make_settings(servoki_url=url, max_attempts=2, send_concurrency=2)
    ids = enqueue(settings, "servoki", purchases(3))
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=5)
        found = rows(worker)
    finally:
        worker.close()
    assert len(handler.seen) == 3  # one request each
    assert report.dispatched.delivered == 3
    assert {found[event_id].status for event_id in ids} == {"delivered"}


def test_an_unexpected_error_while_sending_is_a_retry_and_the_round_goes_on(
    make_settings: Callable[..., Settings],
    misbehaving: tuple[str, type[Misbehaving]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    url, handler = misbehaving
    settings = make_settings(servoki_url=url, max_attempts=2, send_concurrency=2)
    ids = enqueue(settings, "servoki", purchases(3))
    worker = Worker(settings)
    client = worker.dispatcher.http
    send = client.send

    def broken(*args: Any, **kwargs: Any) -> Any:
        send(*args, **kwargs)  # the API gets it; reading the answer then fails (a bug)
        raise ValueError("a bug while reading the answer")

    client.send = broken  # type: ignore[method-assign]
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
        assert "gave up after 2 attempts" in error
        assert "unexpected error: ValueError: a bug while reading the answer" in error
    assert "failed unexpectedly" in caplog.text  # logged with its traceback, not swallowed
