"""The delivery client on real connections: TLS is verified, and an API whose certificate does
not verify gets no event. (Reading answers: tests/unit/test_transport.py; deadlines:
tests/integration/test_one_request.py.)"""

from __future__ import annotations

import http.server
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from relay.destinations.base import HttpRequest
from relay.settings import Settings
from relay.worker.loop import Worker
from relay.worker.transport import TRANSPORT_ERRORS, HttpClient
from tests.support.pipeline import enqueue, purchases, rows


class HttpsApi:
    """An HTTPS server on loopback, its certificate signed by a throwaway CA: answers every
    POST with 202 and counts what it received."""

    def __init__(self, ca: trustme.CA) -> None:
        self.posts = 0
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                api.posts += 1
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert("127.0.0.1").configure_cert(context)
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def api(ca: trustme.CA) -> Iterator[HttpsApi]:
    server = HttpsApi(ca)
    yield server
    server.close()


def post(url: str) -> HttpRequest:
    return HttpRequest("POST", f"{url}/v1/events", {"Content-Type": "application/json"}, b"{}")


def test_a_certificate_that_does_not_verify_is_refused(api: HttpsApi) -> None:
    client = HttpClient(2.0, 5.0)
    try:
        with pytest.raises(TRANSPORT_ERRORS, match="CERTIFICATE_VERIFY_FAILED"):
            client.send(post(api.url), 5.0)
    finally:
        client.close()
    assert api.posts == 0


def test_a_certificate_from_a_trusted_ca_is_accepted(
    api: HttpsApi, ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control for the test above: the same server, its CA trusted the way an operator
    # trusts a private CA (SSL_CERT_FILE), and the request goes through.
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    client = HttpClient(2.0, 5.0)
    try:
        assert client.send(post(api.url), 5.0).status == 202
    finally:
        client.close()
    assert api.posts == 1


def test_the_worker_sends_nothing_to_an_api_whose_certificate_fails(
    api: HttpsApi, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(servoki_url=api.url, max_attempts=2)
    ids = enqueue(settings, "servoki", purchases(3))
    worker = Worker(settings)
    try:
        worker.flush(max_wait=1.0)
        found = rows(worker)
    finally:
        worker.close()
    assert api.posts == 0
    assert {found[i].status for i in ids} <= {"pending", "dead"}
    assert all("CERTIFICATE_VERIFY_FAILED" in (found[i].last_error or "") for i in ids)
