"""Destination modules behind one protocol (:class:`~relay.destinations.base.Destination`).

Each API is one module whose class knows everything about it (schema, request, answers, limit
scopes, key shape, default URL and limit) and registers itself with :func:`register`. A third
API is one new module: a ``Destination`` subclass decorated with ``@register``, imported before
the settings are read (see :mod:`relay.destinations.registry`).

This package imports nothing from the relay but :mod:`relay.errors`: the settings read it.
"""

from __future__ import annotations

from relay.destinations.base import Destination, HttpRequest
from relay.destinations.config import DestinationConfig, Option
from relay.destinations.rates import RateLimit
from relay.destinations.registry import KINDS, destination_class, register, unregister

# Importing the built-in modules registers their kinds, in this order.
from relay.destinations.servoki import Servoki  # isort: skip
from relay.destinations.datalook import DataLook  # isort: skip


def key_is_well_formed(kind: str, key: str) -> bool:
    """Whether ``key`` has the documented shape for ``kind``."""
    return destination_class(kind).key_is_well_formed(key)


def build_destinations(configs: dict[str, DestinationConfig]) -> dict[str, Destination]:
    """One destination object per enabled destination, by name."""
    return {name: destination_class(cfg.kind)(cfg) for name, cfg in configs.items()}


__all__ = [
    "KINDS",
    "DataLook",
    "Destination",
    "DestinationConfig",
    "HttpRequest",
    "Option",
    "RateLimit",
    "Servoki",
    "build_destinations",
    "destination_class",
    "key_is_well_formed",
    "register",
    "unregister",
]
