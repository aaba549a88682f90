"""A production install carries only production dependencies: the sandbox's aiohttp is an extra.

A service that only runs ``enqueue()`` and workers installs ``relay``; ``relay sandbox`` and
``relay demo`` need ``relay[sandbox]`` and say so when it is missing.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

from tests.support.services import ROOT

# Run in a child process where aiohttp cannot be imported, as in a production install.
_WITHOUT_AIOHTTP = "import sys; sys.modules['aiohttp'] = None\n"


def run_without_aiohttp(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WITHOUT_AIOHTTP + code, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_aiohttp_is_required_only_by_the_sandbox_extra() -> None:
    requirements = importlib.metadata.requires("relay") or []
    aiohttp = [r for r in requirements if r.startswith("aiohttp")]
    assert aiohttp, requirements
    assert all('extra == "sandbox"' in r for r in aiohttp), aiohttp


def test_enqueue_workers_celery_and_operator_tools_run_without_aiohttp() -> None:
    code = (
        "import json, relay, relay.worker.loop, relay.worker.full_redis, relay.ops.admin, "
        "relay.cli, tasks.app, tasks.jobs\n"
        "loaded = [m for m, v in sys.modules.items() if m.startswith('aiohttp') and v]\n"
        "print(json.dumps(sorted(loaded)))"
    )
    done = run_without_aiohttp(code)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_the_sandbox_says_which_extra_it_needs() -> None:
    code = "from relay.cli import main\nmain(sys.argv[1:])"
    for command in (["sandbox", "--port", "0"], ["demo"]):
        done = run_without_aiohttp(code, *command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        assert "the sandbox needs aiohttp" in done.stderr
        assert "pip install 'relay[sandbox]'" in done.stderr
