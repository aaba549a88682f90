"""The Celery application: ``celery -A tasks worker`` and ``celery -A tasks beat``.

Celery messages are wake-ups only: every durable fact lives in the Redis queue (until the
outbox commit) and in the outbox (after). Losing or duplicating a message is harmless: a pump
that runs twice just finds less to do.
"""

from __future__ import annotations

from tasks.app import app

__all__ = ["app"]
