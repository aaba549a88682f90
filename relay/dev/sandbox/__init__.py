"""A local stand-in for the Servoki and DataLook event APIs, for tests, benchmarks and demos.

``make_app`` builds the aiohttp application, ``serve`` runs it in the current event loop, and
``SandboxProcess`` runs it as a subprocess with a synchronous control client. Behaviour and the
rate-limit accounting rules are documented in :mod:`relay.dev.sandbox.app` and
:mod:`relay.dev.sandbox.state`.
"""

from relay.dev.sandbox.app import STATE, make_app, serve
from relay.dev.sandbox.process import KEEP, SandboxProcess, SandboxStartError
from relay.dev.sandbox.state import RateLimit, SandboxConfig

__all__ = [
    "KEEP",
    "STATE",
    "RateLimit",
    "SandboxConfig",
    "SandboxProcess",
    "SandboxStartError",
    "make_app",
    "serve",
]
