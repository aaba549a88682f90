"""The outbox database: one row per (destination, event_id), the durable record of every event.

schema.py     the tables (outbox, attempts), statuses, the database's clock (db_now)
engine.py     SQLAlchemy engines for PostgreSQL and SQLite (private files, lock and timeouts)
migrate.py    Alembic upgrade and the one schema check (ensure_current); migrations/ holds
              the revisions
store.py      Outbox: insert (dedup), claim_due with a lease, outcomes guarded by the lease
queries.py    what operators read and change: list, show, retry, discard, prune, counts,
              dead reasons
fallback.py   OutboxWriter: enqueue()'s writer when Redis is unavailable
"""

from relay.outbox.store import Claim, Outbox

__all__ = ["Claim", "Outbox"]
