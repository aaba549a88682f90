"""Servoki: ``POST {base}/api/events/server``, 202 on success, server-side dedup on event_id.

Contract: ``shared/api/servoki.txt``. 400 invalid body, 401 bad key, 404 unknown site;
600 requests per minute per egress IP.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from relay.destinations.base import Destination, check_event_id
from relay.destinations.iso4217 import CURRENCY_CODES
from relay.errors import MISSING

KEY_PATTERN = re.compile(r"servoki_[A-Za-z0-9_\-]{8,}")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SITE_CODE = re.compile(r"[0-9]{1,20}")


class Servoki(Destination):
    kind = "servoki"
    path = "/api/events/server"
    success_status = 202
    fields = (
        "site",
        "event_type",
        "vid",
        "value",
        "currency",
        "event_id",
        "occurred_at",
        "props",
        "consent",
    )

    def prepare(
        self, payload: Mapping[str, Any], event_id: str | None, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        self.reject_unknown_fields(payload)
        body = dict(payload)
        if "site" not in body and self.config.site is not None:
            body["site"] = self.config.site
        self._site(body.get("site", MISSING))
        self.string(body, "event_type", required=True)
        self.string(body, "vid")
        self.number(body, "value")
        self._currency(body)
        self.boolean(body, "consent")
        self._props(body)
        self._occurred_at(body, now)
        if "event_id" in body:
            given = check_event_id(self, body["event_id"])
            if event_id is not None and event_id != given:
                raise self.invalid(
                    "event_id", f"the same as the event_id argument {event_id!r}", given
                )
            event_id = given
        elif event_id is not None:
            body["event_id"] = check_event_id(self, event_id)
        else:
            body["event_id"] = event_id = new_event_id()
        return event_id, body

    def limit_scopes(self) -> tuple[str, ...]:
        """One bucket per egress IP: ``global`` (one NAT), ``host``, or a label hosts share."""
        scope = self.config.egress_scope
        if scope == "host":
            scope = f"host:{socket.gethostname()}"
        return (f"servoki:ip:{scope}",)

    def _site(self, site: object) -> None:
        if site is MISSING:
            raise self.invalid(
                "site",
                "your domain or numeric site code (or set RELAY_SERVOKI_SITE)",
                MISSING,
            )
        if isinstance(site, int) and not isinstance(site, bool) and site >= 0:
            return
        if isinstance(site, str) and (_DOMAIN.fullmatch(site) or _SITE_CODE.fullmatch(site)):
            return
        raise self.invalid("site", 'a domain such as "shop.example.com" or a numeric code', site)

    def _currency(self, body: Mapping[str, Any]) -> None:
        value = body.get("currency", MISSING)
        if value is not MISSING and value not in CURRENCY_CODES:
            raise self.invalid("currency", 'a 3-letter ISO 4217 code such as "EUR"', value)

    def _props(self, body: Mapping[str, Any]) -> None:
        value = body.get("props", MISSING)
        if value is MISSING:
            return
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise self.invalid("props", "a JSON object with string keys", value)
        bad = _first_non_json(value)
        if bad is not None:
            raise self.invalid(f"props.{bad[0]}", "a JSON value", bad[1])

    def _occurred_at(self, body: dict[str, Any], now: datetime) -> None:
        value = body.get("occurred_at", MISSING)
        expected = (
            'an aware datetime or an ISO 8601 string with offset such as "2026-06-12T10:00:00Z"'
        )
        if value is MISSING:
            # Stamped now: the event may wait in the queue, and "now" at delivery would be wrong.
            body["occurred_at"] = now.isoformat().replace("+00:00", "Z")
        elif isinstance(value, datetime):
            if value.tzinfo is None or value.utcoffset() is None:
                raise self.invalid("occurred_at", expected, value)
            body["occurred_at"] = value.isoformat()
        elif isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value)
            except ValueError:
                raise self.invalid("occurred_at", expected, value) from None
            if parsed.tzinfo is None:
                raise self.invalid("occurred_at", expected, value)
        else:
            raise self.invalid("occurred_at", expected, value)


def _first_non_json(value: object, path: str = "") -> tuple[str, object] | None:
    """The first place in ``value`` that JSON cannot carry as it is, or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return (
            None
            if value == value and value not in (float("inf"), float("-inf"))
            else (
                path or "value",
                value,
            )
        )
    if isinstance(value, list):
        for i, item in enumerate(value):
            found = _first_non_json(item, f"{path}[{i}]")
            if found:
                return found
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return (f"{path}.{key!r}".lstrip("."), key)
            found = _first_non_json(item, f"{path}.{key}".lstrip("."))
            if found:
                return found
        return None
    return (path or "value", value)


def new_event_id() -> str:
    """A fresh, unique event id (UUID4 hex)."""
    import uuid

    return uuid.uuid4().hex
