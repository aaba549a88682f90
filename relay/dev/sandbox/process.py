"""Run the sandbox as a real subprocess and drive its control endpoints from synchronous code.

Usage::

    with SandboxProcess(datalook_limit="5/1s") as sandbox:
        httpx.post(f"{sandbox.url}/event", ...)
        assert sandbox.stats()["datalook"]["accepted"] == 1

The child's monotonic clock is the system-wide ``CLOCK_MONOTONIC`` on Linux, so the ``t`` values
returned by :meth:`SandboxProcess.requests` compare directly with ``time.monotonic()`` here.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from enum import Enum
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Self

import httpx

_READY_PREFIX: Final = "sandbox listening on "
_PROJECT_ROOT: Final = Path(__file__).resolve().parents[3]


class _Keep(Enum):
    KEEP = "keep"


KEEP: Final = _Keep.KEEP
"""Sentinel for :meth:`SandboxProcess.configure`: leave this setting as it is."""


class SandboxStartError(RuntimeError):
    """The sandbox subprocess did not announce its address; the message carries its stderr."""


class SandboxProcess:
    """A ``python -m relay.dev.sandbox`` child process plus a small control client.

    Limits are ``"N/Ws"`` strings (``"600/60s"``, ``"50/0.5s"``) or None to disable them.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        servoki_limit: str | None = "600/60s",
        datalook_limit: str | None = "500/10s",
        sites: Iterable[str] | None = None,
        seed: int | None = None,
        startup_timeout: float = 15.0,
    ) -> None:
        self._argv = [
            sys.executable,
            "-m",
            "relay.dev.sandbox",
            "--host",
            host,
            "--port",
            str(port),
        ]
        self._argv += ["--servoki-limit", servoki_limit or "off"]
        self._argv += ["--datalook-limit", datalook_limit or "off"]
        for site in sites or ():
            self._argv += ["--site", site]
        if seed is not None:
            self._argv += ["--seed", str(seed)]
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._client: httpx.Client | None = None
        self._url: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> Self:
        """Spawn the child and wait until it prints its address (or fail with its stderr)."""
        if self._proc is not None:
            raise RuntimeError("sandbox already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        # A file, not a pipe: a chatty child never blocks on a full pipe. Closed in stop().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                self._argv,
                stdout=subprocess.PIPE,
                stderr=self._stderr,
                stdin=subprocess.DEVNULL,
                env=env,
            )
            self._url = self._read_url()
            self._client = httpx.Client(base_url=self._url, timeout=10.0)
        except BaseException:
            self.stop()
            raise
        return self

    def _read_url(self) -> str:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        deadline = time.monotonic() + self._startup_timeout
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SandboxStartError(
                        self._failure(f"did not start within {self._startup_timeout:g} s")
                    )
                if not selector.select(remaining):
                    continue
                chunk = os.read(fd, 4096)
                if not chunk:
                    # stdout closed: let the child finish writing stderr before we read it.
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self._proc.wait(2.0)
                    raise SandboxStartError(self._failure("exited before listening"))
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode(errors="replace").strip()
        if not line.startswith(_READY_PREFIX):
            raise SandboxStartError(self._failure(f"printed an unexpected line {line!r}"))
        return line.removeprefix(_READY_PREFIX)

    def _failure(self, what: str) -> str:
        stderr = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            stderr = self._stderr.read().decode(errors="replace").strip()
        return f"sandbox subprocess {what}; stderr:\n{stderr or '(empty)'}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """Terminate the child (SIGTERM, then SIGKILL after ``timeout``); return its exit code."""
        if self._client is not None:
            self._client.close()
            self._client = None
        returncode: int | None = None
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            returncode = proc.returncode
            if proc.stdout is not None:
                proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- control helpers ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL shared by both APIs, e.g. ``http://127.0.0.1:41234``."""
        if self._url is None:
            raise RuntimeError("sandbox not started")
        return self._url

    @property
    def servoki_url(self) -> str:
        return f"{self.url}/api/events/server"

    @property
    def datalook_url(self) -> str:
        return f"{self.url}/event"

    def _call(self, method: str, path: str, json: Any = None, **params: str) -> Any:
        if self._client is None:
            raise RuntimeError("sandbox not started")
        response = self._client.request(method, path, json=json, params=params or None)
        if response.status_code >= 400:
            raise ValueError(f"sandbox {method} {path} failed: {response.text}")
        return response.json()

    def stats(self) -> dict[str, Any]:
        """``{"servoki": {...}, "datalook": {...}}`` counters, statuses and window peaks."""
        result: dict[str, Any] = self._call("GET", "/_sandbox/stats")
        return result

    def events(self, api: str) -> list[dict[str, Any]]:
        """Stored events of ``api``: ``{"body", "t", "received_at", "scope"}`` each."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/events", api=api)
        return result

    def requests(self, api: str) -> list[dict[str, Any]]:
        """Every request of ``api``: ``{"t", "status", "scope", "retry_after"}`` each."""
        result: list[dict[str, Any]] = self._call("GET", "/_sandbox/requests", api=api)
        return result

    def set_faults(self, **faults: Any) -> dict[str, Any]:
        """Change some fault switches (others keep their value); return all of them."""
        result: dict[str, Any] = self._call("POST", "/_sandbox/faults", json=faults)
        return result

    def clear_faults(self) -> dict[str, Any]:
        """Switch every fault off."""
        result: dict[str, Any] = self._call("DELETE", "/_sandbox/faults")
        return result

    def reset(self) -> None:
        """Clear events, counters, windows, faults, revocations and dedup ids; keep config."""
        self._call("POST", "/_sandbox/reset")

    def revoke(self, key: str) -> None:
        """Make requests carrying exactly ``key`` get 401."""
        self._call("POST", "/_sandbox/revoke", json={"key": key})

    def unrevoke(self, key: str) -> None:
        """Accept ``key`` again."""
        self._call("POST", "/_sandbox/unrevoke", json={"key": key})

    def configure(
        self,
        *,
        servoki_limit: str | _Keep | None = KEEP,
        datalook_limit: str | _Keep | None = KEEP,
        sites: Iterable[str] | None = None,
    ) -> dict[str, Any]:
        """Change limits (None disables one) and/or known sites; return the whole config."""
        payload: dict[str, Any] = {}
        if servoki_limit is not KEEP:
            payload["servoki_limit"] = servoki_limit
        if datalook_limit is not KEEP:
            payload["datalook_limit"] = datalook_limit
        if sites is not None:
            payload["sites"] = list(sites)
        result: dict[str, Any] = self._call("POST", "/_sandbox/config", json=payload)
        return result
