"""DataLook: ``POST {base}/event``, 204 on success, no server-side dedup.

Contract: ``shared/api/datalook.txt``. 401 bad or revoked key; 500 requests per 10 s per key id
(sliding window, 429 + Retry-After). The event id is the outbox's dedup key only: DataLook's body
has no such field, so the relay's outbox is the only guard against double counting.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.destinations.base import (
    UNICODE_TEXT,
    Destination,
    check_event_id,
    is_finite,
    is_plain_scalar,
    is_unicode,
    new_event_id,
)
from relay.destinations.registry import register
from relay.errors import MISSING

# dl_live_<key_id>_<secret>: the key id has no "_", the secret may. A secret under 8 characters
# is a key cut short when copied (and too short to redact from texts without masking words).
KEY_PATTERN = re.compile(r"dl_live_([A-Za-z0-9]+)_([A-Za-z0-9_\-]{8,})")
EVENT_NAMES = ("pageview", "click", "success", "custom")
# DataLook strips these server-side; the relay drops them first so it keeps no PII it cannot send.
PII_KEY = re.compile(r"email|phone|password|ssn", re.IGNORECASE)


@register
class DataLook(Destination):
    kind = "datalook"
    path = "/event"
    type_field = "event_name"
    success_status = 204
    key_pattern = KEY_PATTERN
    key_shape = "dl_live_<key_id>_<secret>"
    # A shorter secret is a key cut short when copied; it would also be too short to redact
    # from texts without masking ordinary words.
    key_rule = "a key id of letters and digits and a secret of at least 8 letters, digits, _ or -"
    url_required = "DataLook hosts are per account; copy the base URL from the DataLook dashboard"
    default_rate_limit = "500/10s"
    fields = (
        "event_name",
        "page_path",
        "name",
        "success_user_id",
        "success_value",
        "properties",
    )

    def prepare(
        self, payload: Mapping[str, Any], event_id: str | None, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        self.reject_unknown_fields(payload)
        body = dict(payload)
        event_name = body.get("event_name", MISSING)
        if not isinstance(event_name, str) or event_name not in EVENT_NAMES:
            raise self.invalid("event_name", f"one of {', '.join(EVENT_NAMES)}", event_name)
        self.string(body, "page_path", required=True)
        # A rule name is never empty, on any event: the API refuses "" wherever it appears.
        self.string(body, "name", required=event_name == "success", non_empty=True)
        self.string(body, "success_user_id")
        self.number(body, "success_value")
        if "properties" in body:
            body["properties"] = self._properties(body["properties"])
        return (new_event_id() if event_id is None else check_event_id(self, event_id)), body

    def secrets(self) -> tuple[str, ...]:
        """The key, and its secret part alone (which may hold "_"); not the key id, which is
        the rate-limit scope and part of Redis key names."""
        key = self.config.api_key.get_secret_value()
        match = KEY_PATTERN.fullmatch(key)
        return (key, match.group(2)) if match else (key,)

    def limit_scopes(self) -> tuple[str, ...]:
        return (f"datalook:key:{key_id(self.config.api_key.get_secret_value())}",)

    def _properties(self, value: object) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.invalid("properties", "a flat object of string/number/boolean values", value)
        kept: dict[str, Any] = {}
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                self.key("properties", "an object with string keys", key)
            # A plain scalar passes every branch below: its name is built only for the others.
            if not is_plain_scalar(item) or item is None:
                self._property(f"properties.{key}", item)
            if not _is_pii(key):
                kept[key] = item
        return kept

    def _property(self, name: str, item: object) -> None:
        if isinstance(item, str):
            if not is_unicode(item):
                raise self.invalid(name, f"a string of {UNICODE_TEXT}", item)
        elif isinstance(item, bool):
            pass
        elif not isinstance(item, int | float) or not is_finite(item):
            raise self.invalid(name, "a string, finite number or boolean", item)


@functools.lru_cache(maxsize=1024)
def _pii(key: str) -> bool:
    return PII_KEY.search(key) is not None


def _is_pii(key: str) -> bool:
    """Whether DataLook strips ``key``; remembered for plain str keys (the same few, mostly)."""
    return _pii(key) if type(key) is str else PII_KEY.search(key) is not None


def key_id(api_key: str) -> str:
    """The key id of a DataLook key (its rate-limit scope); never the secret."""
    match = KEY_PATTERN.fullmatch(api_key)
    return match.group(1) if match else "malformed"
