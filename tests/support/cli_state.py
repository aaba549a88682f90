"""An outbox in a known state, made by real deliveries to the sandbox, and a CLI runner over it.

After :func:`build`:

- servoki: ``s-ok-0..3`` delivered (202), ``s-404-0..1`` dead (404: unknown site);
- datalook: ``d-ok-0..2`` delivered (204), ``d-400`` dead (400: no page_path), then its key is
  revoked: ``d-wait-0..1`` pending and the destination paused (401).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from click.testing import CliRunner, Result

from relay.cli import main
from relay.dev.sandbox import SandboxProcess
from relay.enqueue import Enqueuer
from relay.settings import Settings
from relay.worker.loop import Worker
from tests.support.services import DATALOOK_KEY, SECRETS, relay_env

UNKNOWN_SITE = "unknown.example"


@dataclass
class State:
    settings: Settings
    env: dict[str, str]

    def cli(self, *args: str, input: str | None = None, code: int | None = 0) -> Result:
        """Run ``relay ARGS`` in this process with the relay's environment; keys never show."""
        result = CliRunner().invoke(main, list(args), env=self.env, input=input)
        output = result.stdout + result.stderr
        for secret in SECRETS:
            assert secret not in output, f"a key leaked into `relay {' '.join(args)}`"
        if code is not None:
            assert result.exit_code == code, (result.exit_code, output, result.exception)
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def flush(self, max_wait: float = 5.0) -> None:
        worker = Worker(self.settings)
        try:
            worker.flush(max_wait=max_wait)
        finally:
            worker.close()


def build(settings: Settings, sandbox: SandboxProcess) -> State:
    state = State(settings, relay_env(settings, COLUMNS="200"))
    enqueuer = Enqueuer(settings)
    try:
        items = [
            enqueuer.encode("servoki", {"event_type": "purchase", "value": 10 + i}, f"s-ok-{i}")[1]
            for i in range(4)
        ]
        items += [
            enqueuer.encode(
                "servoki", {"event_type": "purchase", "site": UNKNOWN_SITE}, f"s-404-{i}"
            )[1]
            for i in range(2)
        ]
        items += [
            enqueuer.encode("datalook", {"event_name": "click", "page_path": f"/{i}"}, f"d-ok-{i}")[
                1
            ]
            for i in range(3)
        ]
        # Valid for the queue, refused by the API: the relay keeps what the API said (400).
        items.append(
            json.dumps(
                {"d": "datalook", "id": "d-400", "p": {"event_name": "click"}, "t": time.time()}
            ).encode()
        )
        enqueuer.push(items)
        state.flush()
        sandbox.revoke(DATALOOK_KEY)
        enqueuer.push(
            [
                enqueuer.encode(
                    "datalook", {"event_name": "click", "page_path": "/w"}, f"d-wait-{i}"
                )[1]
                for i in range(2)
            ]
        )
        state.flush(max_wait=0)
    finally:
        enqueuer.close()
    return state
