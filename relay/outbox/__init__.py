"""The outbox database: one row per (destination, event_id), the durable record of every event.

schema.py     the tables (outbox, attempts), statuses, the database's clock (db_now)
engine.py     SQLAlchemy engines for PostgreSQL and SQLite, URLs shown without secrets
migrate.py    Alembic upgrade / is_current; migrations/ holds the revisions
store.py      Outbox: insert (dedup), claim_due with a lease, outcomes guarded by the lease
queries.py    what operators read and change: list, show, retry, discard, prune, counts
fallback.py   OutboxWriter: enqueue()'s writer when Redis is unavailable
"""

from relay.outbox.store import Claim, Outbox

__all__ = ["Claim", "Outbox"]
