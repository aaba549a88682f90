"""The HTTP client deliveries use: kept-alive connections, TLS verified, one total deadline per
request.

Requests go straight to httpcore's connection pool. httpx's client on top of it (URL and
header merging, cookies, auth and redirect handling, response decoding) cost more CPU per
request than everything else the relay does for an event, and a delivery needs none of it:
the destination builds the complete request, redirects are never followed (a redirect means
the URL is wrong) and the answer is read as text, up to :data:`BODY_LIMIT` bytes.

httpcore bounds each phase (connect, each read, each write, the pool), not the request: a body
that trickles in a byte at a time never trips the read timeout, and a request can outlive the
lease that makes it the only one in flight for its event. Here every socket operation (name
lookup, connect, TLS, each read and write) of a request gets at most the time left before its
deadline, on kept-alive connections too, so the request is over (answered, or its connection
dropped) by then::

    answer = client.send(request, seconds, before_write=gate)

An expired deadline raises httpcore's timeout exceptions (:data:`TIMEOUTS`); a connection that
fails raises one of :data:`TRANSPORT_ERRORS`. TLS verification stays on: the context is
httpx's default (certifi, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import typing
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpcore
import httpx

from relay.destinations.base import HttpRequest

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


TIMEOUTS = httpcore.TimeoutException
"""What a request raises when a phase's timeout or its total deadline passed."""
TRANSPORT_ERRORS = (
    httpcore.NetworkError,
    httpcore.ProtocolError,
    httpcore.UnsupportedProtocol,
    httpcore.ProxyError,
)
"""What a request raises when its connection could not be made or broke (TLS refused, reset,
a malformed answer)."""


@dataclass(frozen=True)
class Answer:
    """An API's answer to one request."""

    status: int
    headers: dict[str, str]
    """Names in lower case; a repeated header's values joined with ", "."""
    body: str
    """The first :data:`BODY_LIMIT` bytes, as text."""


def read_body(
    response: httpcore.Response, limit: int, headers: dict[str, str] | None = None
) -> str:
    """The first ``limit`` bytes of ``response``'s body as text (bytes not valid in its
    charset become U+FFFD); a body still trickling in at the deadline is cut there: the
    status line has arrived, so the answer is known. ``headers``: the response's, as
    :func:`_headers` reads them, when the caller has them already."""
    headers = _headers(response.headers) if headers is None else headers
    inflate = _decoder(headers.get("content-encoding", ""))
    data = bytearray()
    try:
        for chunk in response.iter_stream():
            data += inflate(chunk, limit - len(data)) if inflate else chunk
            if len(data) >= limit:
                break  # the rest is never read: the connection is closed, not reused
    except TIMEOUTS:
        # The status has arrived, so the answer is known; the body is only its detail.
        data += " … (cut: the rest did not arrive before the request's deadline)".encode()
    except zlib.error as exc:
        data += f" … (cut: the compressed body is broken: {exc})".encode()
    charset = _charset(headers.get("content-type", ""))
    try:
        return bytes(data[:limit]).decode(charset, "replace")
    except LookupError:  # a charset Python does not know
        return bytes(data[:limit]).decode("utf-8", "replace")


def _headers(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in raw:
        key, text = name.decode("latin-1").lower(), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return headers


def _charset(content_type: str) -> str:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return "utf-8"


def _decoder(encoding: str) -> Callable[[bytes, int], bytes] | None:
    """A bounded inflater for a gzip or deflate body (none is asked for, but a proxy may
    compress anyway); None for any other coding, whose bytes are kept as they came."""
    if encoding.strip().lower() not in ("gzip", "deflate", "x-gzip"):
        return None
    inflater = zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected

    def inflate(chunk: bytes, room: int) -> bytes:
        return inflater.decompress(chunk, max(room, 1))

    return inflate


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


class HttpClient:
    """The client deliveries share; see the module docstring."""

    def __init__(self, connect_timeout: float, read_timeout: float, pool: int = 16) -> None:
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=pool,
            max_keepalive_connections=pool,
            keepalive_expiry=5.0,
            network_backend=_Backend(),
        )
        self._extensions: dict[str, typing.Any] = {
            "timeout": {
                "connect": connect_timeout,
                "read": read_timeout,
                "write": read_timeout,
                "pool": read_timeout,
            }
        }

    def send(
        self,
        request: HttpRequest,
        seconds: float,
        *,
        before_write: Callable[[], None] | None = None,
    ) -> Answer:
        """Make ``request`` within ``seconds`` (see :func:`deadline` for ``before_write``)."""
        headers = [*request.headers.items(), ("Content-Length", str(len(request.body)))]
        with (
            deadline(seconds, before_write=before_write),
            self._pool.stream(
                request.method,
                request.url,
                headers=headers,
                content=request.body,
                extensions=self._extensions,
            ) as response,
        ):
            answered = _headers(response.headers)
            body = read_body(response, BODY_LIMIT, answered)
        return Answer(response.status, answered, body)

    def close(self) -> None:
        self._pool.close()
