"""The HTTP client deliveries use: every request has one total deadline.

httpx bounds each phase (connect, each read, each write, the pool), not the request: a body
that trickles in a byte at a time never trips the read timeout, and a request can outlive the
lease that makes it the only one in flight for its event. Here every socket operation (name
lookup, connect, TLS, each read and write) of a request made inside :func:`deadline` gets at
most the time left before that deadline, on kept-alive connections too, so the request is over
(answered, or its connection dropped) by then::

    with deadline(seconds):
        with client.stream("POST", url, content=body) as response:
            ...

An expired deadline raises httpx's own timeout exceptions. TLS verification stays on.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import typing
from collections.abc import Callable, Iterator

import httpcore
import httpx

_local = threading.local()
_CHUNK = 64 * 1024


@contextlib.contextmanager
def deadline(seconds: float, *, before_write: Callable[[], None] | None = None) -> Iterator[float]:
    """Requests made by this thread inside the block end within ``seconds``; yields the
    deadline on the ``time.monotonic()`` clock.

    ``before_write`` runs once, right before the request's first byte is written: the last
    moment it can still be called off (by raising) with nothing sent.
    """
    previous = getattr(_local, "at", None), getattr(_local, "gate", None)
    _local.at = time.monotonic() + max(0.0, seconds)
    _local.gate = before_write
    try:
        yield _local.at
    finally:
        _local.at, _local.gate = previous


def _left(timeout: float | None, expired: type[Exception]) -> float | None:
    """``timeout`` cut to what is left of this thread's deadline; raise once none is left."""
    at: float | None = getattr(_local, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise expired("the request's total deadline passed")
    return left if timeout is None else min(timeout, left)


BODY_LIMIT = 64 * 1024
"""Bytes of a response body read: the outbox keeps 2,000 characters, and an API (or a proxy
in its place) answering megabytes must not cost the worker more than this."""


def read_body(response: httpx.Response, limit: int) -> str:
    """The first ``limit`` bytes of ``response``'s body as text (bytes not valid in its
    charset become U+FFFD); a body still trickling in at the deadline is cut there: the
    status line has arrived, so the answer is known."""
    data = bytearray()
    try:
        for chunk in response.iter_bytes():
            data += chunk
            if len(data) >= limit:
                break  # the rest is never read: the connection is closed, not reused
    except httpx.TimeoutException:
        # The status has arrived, so the answer is known; the body is only its detail.
        data += " … (cut: the rest did not arrive before the request's deadline)".encode()
    try:
        return bytes(data[:limit]).decode(response.encoding or "utf-8", "replace")
    except LookupError:  # a charset Python does not know
        return bytes(data[:limit]).decode("utf-8", "replace")


class _Stream(httpcore.NetworkStream):
    """A connection whose every operation ends by the current request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        gate = getattr(_local, "gate", None)
        if gate is not None:
            _local.gate = None
            gate()
        # In pieces: one write of a large buffer would get the whole timeout once.
        for start in range(0, len(buffer), _CHUNK):
            piece = buffer[start : start + _CHUNK]
            self._stream.write(piece, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: typing.Any,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._stream.start_tls(ssl_context, server_hostname, left))

    def get_extra_info(self, info: str) -> typing.Any:
        return self._stream.get_extra_info(info)


class _Backend(httpcore.NetworkBackend):
    """httpcore's sync backend, with name lookups and connections bound by the deadline."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        errors: list[Exception] = []
        for address in _resolve(host, port, _left(timeout, httpcore.ConnectTimeout)):
            try:
                stream = self._backend.connect_tcp(
                    address,
                    port,
                    _left(timeout, httpcore.ConnectTimeout),
                    local_address,
                    socket_options,
                )
            except httpcore.ConnectError as exc:  # the next address may answer
                errors.append(exc)
                continue
            return _Stream(stream)
        raise errors[-1] if errors else httpcore.ConnectError(f"no address for {host}")

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: typing.Iterable[typing.Any] | None = None,
    ) -> httpcore.NetworkStream:
        left = _left(timeout, httpcore.ConnectTimeout)
        return _Stream(self._backend.connect_unix_socket(path, left, socket_options))

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def _resolve(host: str, port: int, timeout: float | None) -> list[str]:
    """The addresses of ``host``, looked up within ``timeout``: the system resolver cannot be
    interrupted, so a slow lookup is left to finish in the background, unused."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        pass
    else:
        return [host]  # an address already
    found: list[str] = []
    failure: list[OSError] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found.extend(dict.fromkeys(str(info[4][0]) for info in infos))
        except OSError as exc:
            failure.append(exc)

    thread = threading.Thread(target=lookup, name="relay-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise httpcore.ConnectTimeout(f"looking up {host} took longer than the deadline")
    if failure:
        raise httpcore.ConnectError(f"cannot look up {host}: {failure[0]}")
    return found


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's transport on a connection pool whose sockets honour :func:`deadline`."""

    def __init__(self, *, pool: int) -> None:
        super().__init__()
        # httpx builds its pool with httpcore's default backend and has no option for another
        # one: the pool is rebuilt here with the same settings, the backend swapped.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=pool,
            max_keepalive_connections=pool,
            keepalive_expiry=5.0,
            network_backend=_Backend(),
        )


def make_http_client(connect_timeout: float, read_timeout: float, pool: int = 16) -> httpx.Client:
    """The client deliveries share: keep-alive connections, TLS verified, no redirects
    followed (a redirect means the URL is wrong), each phase bounded by the timeouts and each
    request made inside :func:`deadline` by its total deadline."""
    return httpx.Client(
        timeout=httpx.Timeout(read_timeout, connect=connect_timeout),
        transport=DeadlineTransport(pool=pool),
        follow_redirects=False,
    )
