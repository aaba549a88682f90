"""What the relay knows about one enabled destination, and the settings a kind may add.

The settings (:mod:`relay.settings`) build a :class:`DestinationConfig` for every enabled
destination, from ``RELAY_<KIND>_*`` variables or a ``[destinations.NAME]`` table; the
destination reads its API's own settings (Servoki's site, say) from ``options``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Secret(Protocol):
    """A key that hides itself from ``repr`` (pydantic's ``SecretStr`` is one)."""

    def get_secret_value(self) -> str: ...


@dataclass(frozen=True)
class Option:
    """A setting of its own that a destination kind declares (``Destination.options``).

    ``per_destination``: each destination has its own value, ``RELAY_<KIND>_<NAME>`` for the one
    the environment configures and ``NAME`` in a ``[destinations.NAME]`` table. Otherwise the
    kind has one value, ``RELAY_<KIND>_<NAME>``, shared by every destination of the kind.
    """

    name: str
    default: str | None = None
    pattern: str | None = None
    """A regular expression the whole value must match."""
    per_destination: bool = True


@dataclass(frozen=True)
class DestinationConfig:
    """Everything the relay knows about one enabled destination."""

    name: str
    kind: str
    url: str
    api_key: Secret = field(repr=False)
    rate_limit: str = ""
    url_setting: str = ""
    """Where the URL is configured (``RELAY_DATALOOK_URL``, ``url of [destinations.NAME]``):
    what an operator must fix when the URL answers like no API would."""
    options: Mapping[str, str] = field(default_factory=dict, hash=False)
    """The values of the kind's own settings (``Destination.options``) that are set."""
