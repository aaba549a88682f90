"""Paused destinations, shared by every worker through Redis.

A 401/403 pauses a destination: its events stay pending, none is marked dead. While paused, one
worker at a time may send a single probe event when the probe interval has passed; the interval
doubles after every refused probe. A delivered probe (or ``relay destinations resume``) resumes.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis

from relay.keys import Keys, as_text, lua

log = logging.getLogger("relay.pauses")


class Pauses:
    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        probe_seconds: float = 30.0,
        probe_cap: float = 3600.0,
    ) -> None:
        self.redis = client
        self.keys = keys
        self.probe_seconds = probe_seconds
        self.probe_cap = probe_cap
        # Scripts, not HSET / SET NX: they also work on a full Redis (see lua/pause.lua).
        self._pause = client.register_script(lua("relay.limiter", "pause.lua"))
        self._probe_lock = client.register_script(lua("relay.limiter", "probe_lock.lua"))
        self._resume = client.register_script(lua("relay.limiter", "resume.lua"))

    def all(self) -> dict[str, dict[str, Any]]:
        """Paused destinations → their record (reason, since, probe_at, interval, status)."""
        raw = self.redis.hgetall(self.keys.paused)
        return {as_text(name): json.loads(value) for name, value in raw.items()}

    def pause(
        self,
        name: str,
        reason: str,
        status: int | None = None,
        *,
        by: str = "relay",
        probe: bool = False,
    ) -> None:
        """Pause ``name``; a refused ``probe`` doubles the wait before the next probe."""
        current = self.all().get(name) if probe else None
        interval = self.probe_seconds
        if current is not None:
            interval = min(self.probe_cap, float(current.get("interval", interval)) * 2)
        record = json.dumps(
            {
                "reason": reason,
                "status": status,
                "by": by,
                "since": current["since"] if current else time.time(),
                "interval": interval,
                "probe_at": time.time() + interval if by == "relay" else None,
            }
        )
        # Only the first refusal of a round pauses; the others find it paused already.
        first_only = current is None and by == "relay"
        if self._pause(keys=[self.keys.paused], args=[name, record, int(first_only)]) and (
            first_only
        ):
            log.error("destination %s paused: %s", name, reason)

    def resume(self, name: str, *, only_by: str | None = None) -> bool:
        """Resume ``name``; False if it was not paused (or, with ``only_by``, paused by
        someone else: a probe's success must not lift an operator's pause)."""
        resumed = bool(self._resume(keys=[self.keys.paused], args=[name, only_by or ""]))
        if resumed:
            log.warning("destination %s resumed", name)
        return resumed

    def take_probe(self, name: str, record: dict[str, Any]) -> bool:
        """Whether this worker may send one probe event to paused ``name`` now."""
        probe_at = record.get("probe_at")
        if probe_at is None or time.time() < probe_at:
            return False
        # One prober per interval across all workers.
        lock = f"{self.keys.paused}:probe:{name}"
        return bool(self._probe_lock(keys=[lock], args=[max(1, int(record["interval"]))]))
