"""A limiter with one scope ``"s"`` and the budget of one limit, for the limiter's tests."""

from __future__ import annotations

from typing import Any

import redis

from relay.keys import Keys
from relay.limiter import RateLimit, RedisLimiter, plan

SCOPE = ("s",)


def make_limiter(client: redis.Redis, namespace: str, limit: str, **options: Any) -> RedisLimiter:
    """``limit`` (e.g. ``"10/1s"``) as scope ``"s"``; ``jitter`` defaults to none."""
    jitter = options.pop("jitter", 0.0)
    budget = plan(RateLimit.parse(limit), jitter)
    return RedisLimiter(client, Keys(namespace), {"s": budget}, jitter=jitter, **options)
