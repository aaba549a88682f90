"""Destination modules behind one protocol (:class:`~relay.destinations.base.Destination`).

A third API is one new module here plus a line in ``KINDS``.
"""

from __future__ import annotations

from relay.destinations import datalook, servoki
from relay.destinations.base import Destination, HttpRequest
from relay.destinations.datalook import DataLook
from relay.destinations.servoki import Servoki
from relay.settings import DestinationConfig

KINDS: dict[str, type[Destination]] = {"servoki": Servoki, "datalook": DataLook}
_KEY_PATTERNS = {"servoki": servoki.KEY_PATTERN, "datalook": datalook.KEY_PATTERN}


def key_is_well_formed(kind: str, key: str) -> bool:
    """Whether ``key`` has the documented shape for ``kind``."""
    return _KEY_PATTERNS[kind].fullmatch(key) is not None


def build_destinations(configs: dict[str, DestinationConfig]) -> dict[str, Destination]:
    """One destination object per enabled destination, by name."""
    return {name: KINDS[cfg.kind](cfg) for name, cfg in configs.items()}


__all__ = ["KINDS", "DataLook", "Destination", "HttpRequest", "Servoki", "build_destinations"]
