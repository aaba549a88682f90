"""How full Redis is: at ``maxmemory`` under ``noeviction`` it refuses writes that may grow it.

The worker reads it to drain a full Redis (:mod:`relay.worker.full_redis`); ``relay status`` and
``relay health`` read it to say so.
"""

from __future__ import annotations

from dataclasses import dataclass

import redis

FULL_ADVICE = (
    "it refuses new writes, so enqueue() writes to the outbox database instead and workers "
    "drain the queue into the outbox; if it stays full, check that workers run and the outbox "
    "database is up, or raise maxmemory"
)


@dataclass(frozen=True)
class RedisMemory:
    """How full Redis is, as its ``maxmemory`` check sees it."""

    used: int
    """Bytes Redis counts against ``maxmemory`` (replication and AOF buffers excluded)."""
    maxmemory: int
    """0: no limit."""
    policy: str

    @property
    def full(self) -> bool:
        """At the limit: under ``noeviction`` Redis refuses writes that may grow memory."""
        return self.maxmemory > 0 and self.used >= self.maxmemory

    def describe(self) -> str:
        return (
            f"used {self.used / 2**20:.1f} MiB of maxmemory {self.maxmemory / 2**20:.1f} MiB, "
            f"policy {self.policy}"
        )


def redis_memory(client: redis.Redis) -> RedisMemory:
    """Read how full ``client``'s Redis is (``INFO memory``)."""
    info = client.info("memory")
    counted = int(info.get("used_memory", 0)) - int(info.get("mem_not_counted_for_evict", 0))
    return RedisMemory(
        used=counted,
        maxmemory=int(info.get("maxmemory", 0)),
        policy=str(info.get("maxmemory_policy", "unknown")),
    )
