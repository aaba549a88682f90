"""The Celery application: ``celery -A tasks worker`` and ``celery -A tasks beat``.

Celery messages are wake-ups only: every durable fact lives in the Redis queue (until the
outbox commit) and in the outbox (after). Losing or duplicating a message is harmless: a pump
that runs twice just finds less to do.

environment.py  settings, the embedded Redis, prometheus-client's multiprocess directory
app.py          the Celery app, its beat schedule, the worker's main-process hooks
jobs.py         the tasks (pump, reap, prune) and each thread's Worker
"""

from __future__ import annotations

# First, before anything loads prometheus-client: it reads PROMETHEUS_MULTIPROC_DIR when it is
# first imported (tasks.app and tasks.jobs load relay.worker and relay.ops.exporter).
from tasks.environment import settings

# isort: split
from tasks.app import app

__all__ = ["app", "settings"]
