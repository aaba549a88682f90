"""Crash points for the fault tests: ``RELAY_FAILPOINTS=drain.after_take`` makes the process
SIGKILL itself the first time it reaches that line (``name:N`` on the N-th time).

Off unless the variable is set; the check is one frozenset lookup. The fault tests use these to
kill a real worker at the exact line a crash case names, then count every event at the API.
"""

from __future__ import annotations

import os
import signal
import threading

_SPEC = {
    name: int(count or 1)
    for name, _, count in (
        item.strip().partition(":")
        for item in os.environ.get("RELAY_FAILPOINTS", "").split(",")
        if item.strip()
    )
}
_ACTIVE = frozenset(_SPEC)
_hits: dict[str, int] = {}
_lock = threading.Lock()


def hit(name: str) -> None:
    """Die by SIGKILL here if the failpoint ``name`` is armed and its count is reached."""
    if name not in _ACTIVE:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        if _hits[name] >= _SPEC[name]:
            os.kill(os.getpid(), signal.SIGKILL)
