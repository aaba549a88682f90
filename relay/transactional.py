"""The transactional enqueue for SQLAlchemy: the event's outbox row in the caller's transaction.

    with Session(engine) as session, session.begin():
        session.add(order)
        relay.enqueue_in(session, "servoki", purchase, event_id=f"order_{order.id}")

The event exists if and only if the transaction commits: the row is written on the caller's
connection (the drain's statement, :mod:`relay.outbox.transactional`) and never committed here.
Once the transaction commits, a wake-up goes to the queue so that an idle worker claims the row
at once (best effort: the row is durable without it).

SQLAlchemy tells a Session after its commit (``after_commit``), but a Core ``Connection`` only
as its COMMIT is sent; for a Connection the wake-up goes out then, and a worker that looks
before the COMMIT lands retries shortly (see ``relay.worker.loop``). Savepoints are followed on
both: what was enqueued inside a savepoint that rolled back is never woken for or captured.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import Session
from sqlalchemy.orm import SessionTransaction as OrmTransaction

from relay.enqueue import Transaction, default_enqueuer
from relay.outbox.transactional import insert_in
from relay.queue.wire import NewEvent

Callback = Callable[[], object]


def enqueue_in(
    session_or_connection: Session | Connection,
    destination: str,
    payload: Mapping[str, Any],
    *,
    event_id: str | None = None,
) -> str:
    """Validate ``payload`` as :func:`relay.enqueue` does and write its outbox row inside the
    caller's transaction (a SQLAlchemy ``Session`` or ``Connection`` on the relay's outbox
    database); never commits it.

    Returns the event id (stamped when absent). The row exists if and only if that transaction
    commits; the same ``(destination, event_id)`` from :func:`relay.enqueue` or a second call
    makes one row. Raises :class:`relay.InvalidEvent` naming the field (nothing is written) and
    :class:`relay.ConfigError` when the database holds no current outbox (``relay db
    upgrade``).
    """
    enqueuer = default_enqueuer()
    event_id, item = enqueuer.encode(destination, payload, event_id)
    transaction: Transaction
    if isinstance(session_or_connection, Session):
        transaction = InSession(session_or_connection)
    elif isinstance(session_or_connection, Connection):
        transaction = OnConnection(session_or_connection)
    else:
        raise TypeError(
            "enqueue_in() takes a SQLAlchemy Session or Connection, "
            f"not {type(session_or_connection).__name__}"
        )
    enqueuer.write_in(transaction, [item])
    return event_id


# -- a Session: after_commit, savepoints as SessionTransactions ----------------------------------


@dataclass
class _SessionHooks:
    waiting: list[tuple[OrmTransaction, Callback]] = field(default_factory=list)


_SESSION_KEY = "relay.on_commit"
_hooks_lock = threading.Lock()


class InSession:
    """A Session's transaction: rows on its connection, callbacks after its outermost commit."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def insert(self, events: Sequence[NewEvent]) -> None:
        insert_in(self.session.connection(), events)

    def on_commit(self, callback: Callback) -> None:
        session = self.session
        innermost = session.get_nested_transaction() or session.get_transaction()
        assert innermost is not None  # insert() began one
        _session_hooks(session).waiting.append((innermost, callback))


def _session_hooks(session: Session) -> _SessionHooks:
    with _hooks_lock:
        hooks: _SessionHooks | None = session.info.get(_SESSION_KEY)
        if hooks is None:
            hooks = session.info[_SESSION_KEY] = _SessionHooks()
            event.listen(session, "after_commit", _session_committed)
            event.listen(session, "after_soft_rollback", _session_rolled_back)
    return hooks


def _session_committed(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint released: its callbacks wait for the outermost commit
    hooks: _SessionHooks = session.info[_SESSION_KEY]
    waiting, hooks.waiting = hooks.waiting, []
    for _, callback in waiting:
        callback()


def _session_rolled_back(session: Session, previous: OrmTransaction) -> None:
    # ``previous`` is the transaction that ended: the outermost one, or a savepoint. What was
    # enqueued inside it (or inside savepoints within it) is gone with its rows.
    hooks: _SessionHooks = session.info[_SESSION_KEY]
    hooks.waiting = [(tx, cb) for tx, cb in hooks.waiting if not _within(tx, previous)]


def _within(transaction: OrmTransaction | None, ancestor: OrmTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


# -- a Connection: commit / rollback events, savepoints counted -----------------------------------


@dataclass
class _ConnectionHooks:
    waiting: list[tuple[int, Callback]] = field(default_factory=list)
    """Callbacks and the savepoint depth (since the hooks were set) they were registered at."""
    depth: int = 0


_connections: weakref.WeakKeyDictionary[Connection, _ConnectionHooks] = weakref.WeakKeyDictionary()


class OnConnection:
    """A Connection's transaction: rows on it, callbacks as its outermost COMMIT is sent."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def insert(self, events: Sequence[NewEvent]) -> None:
        insert_in(self.connection, events)

    def on_commit(self, callback: Callback) -> None:
        hooks = _connection_hooks(self.connection)
        hooks.waiting.append((hooks.depth, callback))


def _connection_hooks(connection: Connection) -> _ConnectionHooks:
    with _hooks_lock:
        hooks = _connections.get(connection)
        if hooks is None:
            hooks = _connections[connection] = _ConnectionHooks()
            event.listen(connection, "commit", _connection_committed)
            event.listen(connection, "rollback", _connection_rolled_back)
            event.listen(connection, "savepoint", _savepoint_begun)
            event.listen(connection, "release_savepoint", _savepoint_released)
            event.listen(connection, "rollback_savepoint", _savepoint_rolled_back)
    return hooks


def _connection_committed(connection: Connection) -> None:
    hooks = _connections[connection]
    waiting, hooks.waiting, hooks.depth = hooks.waiting, [], 0
    for _, callback in waiting:
        callback()


def _connection_rolled_back(connection: Connection) -> None:
    hooks = _connections[connection]
    hooks.waiting, hooks.depth = [], 0


def _savepoint_begun(connection: Connection, name: str | None) -> None:
    _connections[connection].depth += 1


def _savepoint_released(connection: Connection, name: str, context: Any) -> None:
    hooks = _connections[connection]
    if hooks.depth:  # else a savepoint begun before the hooks were set: nothing to move
        hooks.depth -= 1
        hooks.waiting = [(min(depth, hooks.depth), cb) for depth, cb in hooks.waiting]


def _savepoint_rolled_back(connection: Connection, name: str, context: Any) -> None:
    hooks = _connections[connection]
    if hooks.depth:
        hooks.waiting = [(depth, cb) for depth, cb in hooks.waiting if depth < hooks.depth]
        hooks.depth -= 1
    else:
        # A savepoint begun before the hooks were set: every callback was registered inside it.
        hooks.waiting = []
