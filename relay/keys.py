"""Every Redis key the relay uses, in one place, and the loader of the relay's Lua scripts.

All keys share one hash tag (``{namespace}``) so the Lua scripts also run on Redis Cluster:
every script declares the keys it touches (``KEYS``). Scripts that write are ordered so they
also run on a full Redis (see ``relay/queue/lua/take_batch.lua``). Each part keeps its scripts
in its own ``lua/`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files


def as_text(value: bytes | str) -> str:
    """A Redis reply (bytes, or str from a client that decodes) as text."""
    return value.decode() if isinstance(value, bytes) else value


def lua(package: str, name: str) -> str:
    """The text of the script ``name`` (e.g. ``"take_batch.lua"``) in ``package``'s ``lua/``."""
    return files(package).joinpath("lua", name).read_text()


@dataclass(frozen=True)
class Keys:
    """The Redis key names of one relay namespace (default ``relay``)."""

    namespace: str = "relay"

    @property
    def tag(self) -> str:
        return "{" + self.namespace + "}"

    @property
    def queue(self) -> str:
        """The list enqueue() pushes to and the drain pops from."""
        return f"{self.tag}:queue"

    @property
    def consumers(self) -> str:
        """Set of consumer ids that may own a processing list."""
        return f"{self.tag}:consumers"

    def processing(self, consumer: str) -> str:
        """A consumer's batch in flight between the queue and the outbox commit."""
        return f"{self.tag}:processing:{consumer}"

    def heartbeat(self, consumer: str) -> str:
        """Exists while the consumer is alive; the reaper returns batches of the dead."""
        return f"{self.tag}:heartbeat:{consumer}"

    @property
    def quarantine(self) -> str:
        """Items that could not be parsed, kept for an operator with the reason."""
        return f"{self.tag}:quarantine"

    @property
    def quarantined_total(self) -> str:
        return f"{self.tag}:quarantined_total"

    @property
    def paused(self) -> str:
        """Hash: destination name → JSON reason, for destinations that must not be sent to."""
        return f"{self.tag}:paused"

    def limiter(self, scope: str) -> str:
        """Hash: one rate-limit scope's bucket (GCRA ``tat``; 429 pause and rate cut), in µs
        of Redis time. Expires once idle: an absent bucket is a full one."""
        return f"{self.tag}:limit:{scope}"

    @property
    def workers(self) -> str:
        """Hash: worker id → last heartbeat (unix time), for ``relay health``."""
        return f"{self.tag}:workers"
