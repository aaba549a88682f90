"""``RPUSH`` onto the queue in as few steps as the wire allows: ``enqueue()``'s one write.

``redis.Redis.rpush`` pays on every call for a pool checkout that polls the socket (two
``settimeout`` calls and a ``recv``), a retry wrapper, observability hooks, argument packing and
a response callback: over a unix socket that is half of a bare ``RPUSH``'s 26 µs. A
:class:`ListPusher` keeps its own idle redis-py connections (so URLs, TLS, AUTH, SELECT and the
errors raised are redis-py's own) and sends a command packed from a prefix built once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import redis
from redis.connection import AbstractConnection

try:
    from redis.driver_info import resolve_driver_info
    from redis.utils import SENTINEL

    _DRIVER_INFO = True
except ImportError:  # redis-py before 7 looks nothing up per connection
    _DRIVER_INFO = False


class ListPusher:
    """Appends items to one Redis list; safe to share between threads and across ``fork``.

    Each call takes an idle connection (or opens one), so threads never share a connection;
    ``list.pop``/``list.append`` need no lock. Any error but a complete error reply (OOM)
    closes the connection it happened on, so an idle connection never holds a half-read reply.
    """

    def __init__(self, url: str, key: str, **connection_options: Any) -> None:
        pool = redis.ConnectionPool.from_url(url, **connection_options)  # parses the URL only
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        if _DRIVER_INFO and "driver_info" not in self._connection_kwargs:
            # redis-py reads its own version from the package metadata for every connection it
            # makes (0.7 ms): while Redis is down every enqueue() makes one, so read it once.
            self._connection_kwargs["driver_info"] = resolve_driver_info(
                lib_name=self._connection_kwargs.pop("lib_name", SENTINEL),
                lib_version=self._connection_kwargs.pop("lib_version", SENTINEL),
            )
        encoded = key.encode()
        self._key = b"$%d\r\n%s\r\n" % (len(encoded), encoded)
        self._idle: list[AbstractConnection] = []
        self._pid = os.getpid()

    def push(self, items: Sequence[bytes]) -> int:
        """``RPUSH key *items``; the list's length after it. Raises ``redis.RedisError``."""
        command = self.pack(items)
        if self._pid != os.getpid():
            # A forked child (a preloading web server's worker) must not write on its parent's
            # sockets: both would read each other's replies. The parent keeps them open.
            self._idle = []
            self._pid = os.getpid()
        try:
            connection = self._idle.pop()
        except IndexError:
            return self._send(self._connection_class(**self._connection_kwargs), command)
        try:
            return self._send(connection, command)
        except redis.ConnectionError:
            # The server closed this idle connection (a restart, its `timeout` setting): redis-py's
            # pool would find that out before sending; we find out on sending, and try once on a
            # new connection, as it would. Had Redis run the first RPUSH after all, the item is
            # queued twice under one event id, and the drain's insert keeps one row.
            return self._send(self._connection_class(**self._connection_kwargs), command)

    def pack(self, items: Sequence[bytes]) -> list[bytes]:
        """The RESP form of ``RPUSH key *items``, as chunks for one ``sendall`` each."""
        parts = [b"*%d\r\n$5\r\nRPUSH\r\n" % (len(items) + 2), self._key]
        for item in items:
            parts.append(b"$%d\r\n" % len(item))
            parts.append(item)
            parts.append(b"\r\n")
        return [b"".join(parts)]

    def _send(self, connection: AbstractConnection, command: list[bytes]) -> int:
        try:
            send = connection.send_packed_command
            send(command, check_health=False)  # type: ignore[no-untyped-call]
            length = connection.read_response()
        except redis.ResponseError:
            self._idle.append(connection)  # a whole error reply was read: the connection is clean
            raise
        except BaseException:
            _close(connection)  # a half-sent command or a half-read reply (a timeout, ^C)
            raise
        if not isinstance(length, int):
            _close(connection)
            raise redis.ConnectionError(f"RPUSH answered {length!r}, not a length")
        self._idle.append(connection)
        return length

    def close(self) -> None:
        """Close the idle connections (those in use close when their call ends with an error)."""
        idle, self._idle = self._idle, []
        for connection in idle:
            _close(connection)


def _close(connection: AbstractConnection) -> None:
    connection.disconnect()  # type: ignore[no-untyped-call]
