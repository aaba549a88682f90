"""A third API is one new module: a destination kind defined only here runs end to end.

``Acme`` below knows everything about its (made-up) API: key shape, payload schema, request,
answers, limit scope, default limit and URL rule, success status and a setting of its own. The
test registers it, serves the API over real HTTP on loopback, configures two destinations of
the kind in a ``RELAY_CONFIG`` file, and sends events through ``enqueue``, the shared limiter,
a worker's flush and ``relay status``, without any other file knowing the kind.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner
from sqlalchemy import select

import relay
from relay.cli import main
from relay.destinations import Destination, HttpRequest, Option, register, unregister
from relay.destinations.base import check_event_id, new_event_id
from relay.destinations.outcome import Outcome
from relay.errors import ConfigError, InvalidEvent
from relay.keys import Keys
from relay.outbox.schema import outbox
from relay.settings import Settings, load_settings
from relay.worker.loop import Worker

EU_KEY = "acme-teu1-Q9wzR2kd7Lm4PxYt"
US_KEY = "acme-tus2-B7vn3Hq8Jk2LmZrW"
EU_LIMIT = "10/1s"


class Acme(Destination):
    """``POST {base}/v1/hits`` with an ``X-Acme-Key`` header; 201 on success, 409 for an
    event id it already has; keys ``acme-<team>-<secret>``, limited per team."""

    kind = "acme"
    path = "/v1/hits"
    success_status = 201
    fields = ("hit", "amount", "event_id")
    key_pattern = re.compile(r"acme-([a-z0-9]{4})-([A-Za-z0-9]{12,})")
    key_shape = "acme-<team>-<secret>"
    key_rule = "a team of 4 letters or digits and a secret of at least 12 letters or digits"
    url_required = "Acme hosts are per region"
    default_rate_limit = "20/1s"
    options = (Option("region", "eu", pattern=r"[a-z]{2}"),)

    def prepare(
        self, payload: Mapping[str, Any], event_id: str | None, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        self.reject_unknown_fields(payload)
        self.string(payload, "hit", required=True)
        amount = payload.get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise self.invalid("amount", "a whole number of cents >= 0", amount)
        body = dict(payload)
        event_id = check_event_id(self, body.get("event_id", event_id or new_event_id()))
        body["event_id"] = event_id
        return event_id, body

    def build_request(self, body_bytes: bytes) -> HttpRequest:
        return HttpRequest(
            "POST",
            self.config.url + self.path,
            {
                "X-Acme-Key": self.config.api_key.get_secret_value(),
                "X-Acme-Region": self.config.options["region"],
                "Content-Type": "application/json",
            },
            body_bytes,
        )

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        if status == 409:  # the API already has this event id: a resend, delivered before
            return Outcome.delivered(status)
        return super().classify(status, headers, body)

    def secrets(self) -> tuple[str, ...]:
        match = self.key_pattern.fullmatch(self.config.api_key.get_secret_value())
        return (match.group(0), match.group(2)) if match else super().secrets()

    def limit_scopes(self) -> tuple[str, ...]:
        match = self.key_pattern.fullmatch(self.config.api_key.get_secret_value())
        return (f"acme:team:{match.group(1) if match else 'malformed'}",)


@dataclass
class AcmeApi:
    """The API on loopback: what it received, and the event ids it already has."""

    server: ThreadingHTTPServer
    hits: list[dict[str, Any]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def serve() -> AcmeApi:
    api: AcmeApi

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            key = self.headers.get("X-Acme-Key", "")
            with api.lock:
                api.hits.append(
                    {
                        "at": time.monotonic(),
                        "path": self.path,
                        "key": key,
                        "region": self.headers.get("X-Acme-Region"),
                        "body": body,
                    }
                )
                duplicate = body["event_id"] in api.seen
                api.seen.add(body["event_id"])
            if key not in (EU_KEY, US_KEY):
                self.answer(401, "unknown key")
            elif body["hit"] == "refused":  # an error page that echoes the key it was sent
                self.answer(422, f"hit refused for key {key}")
            else:
                self.answer(409 if duplicate else 201, "")

        def answer(self, status: int, text: str) -> None:
            data = text.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    api = AcmeApi(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=api.server.serve_forever, daemon=True).start()
    return api


@pytest.fixture
def acme_kind() -> Iterator[type[Acme]]:
    register(Acme)
    yield Acme
    unregister(Acme.kind)


@pytest.fixture
def acme_api() -> Iterator[AcmeApi]:
    api = serve()
    yield api
    api.server.shutdown()
    api.server.server_close()


@pytest.fixture
def acme_env(
    acme_kind: type[Acme],
    acme_api: AcmeApi,
    redis_url: str,
    db_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, str]:
    """Two Acme destinations in a RELAY_CONFIG file; the environment every part reads."""
    config = tmp_path / "relay.toml"
    config.write_text(
        f"[destinations.acme-eu]\n"
        f'kind = "acme"\nurl = "{acme_api.url}"\napi_key_env = "ACME_EU_KEY"\n'
        f'rate_limit = "{EU_LIMIT}"\n\n'
        f"[destinations.acme-us]\n"
        f'kind = "acme"\nurl = "{acme_api.url}/"\napi_key_env = "ACME_US_KEY"\n'
        f'region = "us"\n'
    )
    env = {
        "RELAY_CONFIG": str(config),
        "RELAY_HOME": str(tmp_path / ".relay"),
        "RELAY_NAMESPACE": f"t{uuid.uuid4().hex[:10]}",
        "RELAY_REDIS_URL": redis_url,
        "RELAY_DATABASE_URL": db_url,
        "RELAY_CONNECT_TIMEOUT": "0.5",
        "RELAY_READ_TIMEOUT": "2.0",
        "ACME_EU_KEY": EU_KEY,
        "ACME_US_KEY": US_KEY,
        "COLUMNS": "200",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def test_a_kind_defined_in_a_test_runs_end_to_end(
    acme_env: dict[str, str],
    acme_api: AcmeApi,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    configs = settings.destination_configs()
    assert set(configs) == {"acme-eu", "acme-us"}
    assert configs["acme-us"].rate_limit == Acme.default_rate_limit
    assert configs["acme-us"].options == {"region": "us"}
    assert configs["acme-eu"].options == {"region": "eu"}  # the option's default

    # enqueue: the kind's own schema check and event id stamp, through the public function.
    monkeypatch.setattr(sys.modules["relay.enqueue"], "_default", None)
    enqueuer = relay.configure(settings)
    with pytest.raises(InvalidEvent, match=r"acme-eu\.amount must be a whole number of cents"):
        relay.enqueue("acme-eu", {"hit": "signup", "amount": 1.5})
    with pytest.raises(InvalidEvent, match=r"acme-eu\.plan must be absent: it is not a acme"):
        relay.enqueue("acme-eu", {"hit": "signup", "amount": 1, "plan": "pro"})
    eu_ids = relay.enqueue_many("acme-eu", [{"hit": "signup", "amount": i} for i in range(12)])
    acme_api.seen.add("sent-before")  # a resend the API already has: its 409 is a delivery
    eu_ids.append(relay.enqueue("acme-eu", {"hit": "signup", "amount": 9}, event_id="sent-before"))
    refused = relay.enqueue("acme-eu", {"hit": "refused", "amount": 0})
    us_id = relay.enqueue("acme-us", {"hit": "purchase", "amount": 4990})
    enqueuer.close()

    # delivery: the worker drains, takes slots from the kind's bucket and sends its requests.
    worker = Worker(settings)
    try:
        report = worker.flush(max_wait=10)
        with worker.engine.connect() as conn:
            rows = {row.event_id: row for row in conn.execute(select(outbox))}
    finally:
        worker.close()
    assert report.dispatched.delivered == 14 and report.dispatched.dead == 1
    assert {rows[i].status for i in [*eu_ids, us_id]} == {"delivered"}
    assert rows["sent-before"].last_status == 409 and rows[us_id].last_status == 201
    assert rows[refused].status == "dead" and rows[refused].last_status == 422
    assert rows[refused].last_error == "hit refused for key ***"  # the kind's own redaction

    hits = {hit["body"]["event_id"]: hit for hit in acme_api.hits}
    assert len(acme_api.hits) == 15 and set(hits) == {*eu_ids, refused, us_id}
    assert {hit["path"] for hit in acme_api.hits} == {"/v1/hits"}
    assert hits[us_id]["key"] == US_KEY and hits[us_id]["region"] == "us"
    assert hits[us_id]["body"] == {"hit": "purchase", "amount": 4990, "event_id": us_id}
    assert {hits[i]["region"] for i in eu_ids} == {"eu"}

    # the limiter: one bucket per team, paced under acme-eu's 10/1s: no 11 requests within a
    # second (slots are 1/7.3 s apart; unmetered, these 14 go out in a few milliseconds).
    eu_times = sorted(hit["at"] for hit in acme_api.hits if hit["key"] == EU_KEY)
    assert len(eu_times) == 14
    assert all(later - first > 1.0 for first, later in zip(eu_times, eu_times[10:], strict=False))
    keys = Keys(acme_env["RELAY_NAMESPACE"])
    assert redis_client.exists(keys.limiter("acme:team:teu1"), keys.limiter("acme:team:tus2")) == 2

    # relay status: the operator sees both destinations of the kind, with their limits.
    runner = CliRunner()
    result = runner.invoke(main, ["status", "--json"], env=acme_env)
    assert result.exit_code == 0, (result.output, result.exception)
    status = json.loads(result.stdout)["destinations"]
    assert set(status) == {"acme-eu", "acme-us"}
    assert {k: status["acme-eu"][k] for k in ("delivered", "dead", "pending", "limit")} == {
        "delivered": 13, "dead": 1, "pending": 0, "limit": EU_LIMIT,
    }  # fmt: skip
    assert status["acme-us"]["delivered"] == 1 and status["acme-us"]["limit"] == "20/1s"
    assert status["acme-eu"]["dead_reasons"] == {"HTTP 422": 1}
    text = runner.invoke(main, ["status"], env=acme_env)
    assert text.exit_code == 0, text.output
    assert "acme-eu" in text.stdout and "acme-us" in text.stdout and EU_LIMIT in text.stdout
    assert EU_KEY not in text.stdout + result.stdout


def test_the_kind_checks_its_keys_urls_and_settings(
    acme_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = Path(acme_env["RELAY_CONFIG"])

    def error(table: str, **env: str) -> str:
        config.write_text(table)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        return str(caught.value)

    base = '[destinations.x]\nkind = "acme"\napi_key_env = "X_KEY"\n'
    assert error(base + 'url = "https://x.example"\n', X_KEY="acme-bad") == (
        "the key of [destinations.x] in RELAY_CONFIG does not look like a acme key (expected "
        "acme-<team>-<secret>), with a team of 4 letters or digits and a secret of at least 12 "
        "letters or digits; copy the key again from the dashboard"
    )
    assert error(base, X_KEY=EU_KEY) == (
        '[destinations.x] in RELAY_CONFIG needs url = "https://…": Acme hosts are per region'
    )
    url = 'url = "https://x.example"\n'
    assert "region must match [a-z]{2}" in error(base + url + 'region = "europe"\n')
    assert "'colour' is not a acme setting" in error(base + url + 'colour = "red"\n')
    assert "rate_limit of [destinations.x]: rate limit 2/1s is too small" in error(
        base + url + 'rate_limit = "2/1s"\n'
    )
    # A kind of its own needs no RELAY_<KIND>_* variable: the built-in ones keep theirs.
    assert "acme_api_key" not in Settings.model_fields
    assert "servoki_api_key" in Settings.model_fields
