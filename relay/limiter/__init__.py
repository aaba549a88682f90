"""When a destination may send: shared rate limits and pauses, in Redis, for every worker.

    budget.py   RateLimit ("600/60s") → Budget (capacity, rate) that cannot exceed it
    bucket.py   RedisLimiter: GCRA buckets in Redis, on Redis's clock, for every worker
    pauses.py   a destination paused (401/403, a wrong URL, an operator) and its probe
    lua/        the buckets' and the pauses' scripts

The seam the delivery engine calls (``Limiter``, its ``Grant`` and ``Ticket``) is
:mod:`relay.limiter.base`.
"""

from relay.limiter.bucket import LimiterStats, RedisLimiter, budgets_for
from relay.limiter.budget import Budget, RateLimit, plan

__all__ = ["Budget", "LimiterStats", "RateLimit", "RedisLimiter", "budgets_for", "plan"]
