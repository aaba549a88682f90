"""``enqueue_on_commit``: validate now, push to Redis once the view's transaction commits."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from django.db import transaction

from relay.contrib.django.apps import relay_app


def enqueue_on_commit(
    destination: str,
    payload: Mapping[str, Any],
    *,
    event_id: str | None = None,
    using: str | None = None,
) -> str:
    """Validate and stamp the event now; queue it when the transaction of ``using`` commits.

    Returns the event id. A bad payload raises :class:`relay.InvalidEvent` here, in the view,
    naming the field. The Redis write runs through ``transaction.on_commit``: after the
    outermost ``atomic()`` block of database ``using`` (None: ``default``) commits; never if it
    (or the savepoint around this call) rolls back; at once outside a transaction. Should
    neither Redis nor the outbox take the event after the commit, RelayUnavailable is raised
    where the ``atomic()`` block ends.
    """
    enqueuer = relay_app().enqueuer
    event_id, item = enqueuer.encode(destination, payload, event_id)
    transaction.on_commit(partial(enqueuer.push, [item]), using=using)
    return event_id
