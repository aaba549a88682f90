"""The destination kinds the relay knows, by name: a third API is one new module.

A module defines a :class:`~relay.destinations.base.Destination` subclass and registers it::

    from relay.destinations import Destination, register

    @register
    class Acme(Destination):
        kind = "acme"            # [destinations.NAME] tables say kind = "acme"
        ...

The settings read each kind's key shape, default URL, default limit and own settings from the
class. A kind registered before :mod:`relay.settings` is first imported (the built-in ones,
which ``relay.destinations`` imports) also gets ``RELAY_<KIND>_API_KEY``, ``_URL``,
``_RATE_LIMIT`` and one variable per option; every kind can be configured in
``[destinations.NAME]`` tables of the ``RELAY_CONFIG`` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import TypeVar

from relay.destinations.base import Destination
from relay.destinations.rates import RateLimit
from relay.errors import ConfigError

D = TypeVar("D", bound=type[Destination])

_KINDS: dict[str, type[Destination]] = {}
KINDS: Mapping[str, type[Destination]] = MappingProxyType(_KINDS)
"""Every registered kind by name, in the order of registration (read-only)."""

_KIND_NAME = re.compile(r"[a-z][a-z0-9_]*")
_REQUIRED = ("path", "success_status", "fields", "key_pattern", "key_shape", "default_rate_limit")


def register(cls: D) -> D:
    """Make ``cls`` the destination kind named ``cls.kind``; returns ``cls`` (a decorator).

    Raises ValueError when the class misses what the relay needs to know about its API or
    another class already holds the name.
    """
    kind = getattr(cls, "kind", "")
    if not isinstance(kind, str) or not _KIND_NAME.fullmatch(kind):
        raise ValueError(
            f"{cls.__name__}.kind must be a name of lower-case letters, digits and _ (it names "
            f"the RELAY_<KIND>_* variables), got {kind!r}"
        )
    missing = [name for name in _REQUIRED if not hasattr(cls, name)]
    if missing:
        raise ValueError(f"destination kind {kind!r} ({cls.__name__}) lacks {', '.join(missing)}")
    RateLimit.parse(cls.default_rate_limit).check_paceable()
    current = _KINDS.get(kind)
    if current is not None and current is not cls:
        raise ValueError(
            f"destination kind {kind!r} is already registered by {current.__module__}."
            f"{current.__qualname__}"
        )
    _KINDS[kind] = cls
    return cls


def unregister(kind: str) -> None:
    """Forget ``kind`` (tests that register a kind of their own clean up with this)."""
    _KINDS.pop(kind, None)


def destination_class(kind: str) -> type[Destination]:
    """The class registered as ``kind``; ConfigError naming the known kinds otherwise."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown destination kind {kind!r}; known kinds: {', '.join(_KINDS) or 'none'}"
        ) from None
