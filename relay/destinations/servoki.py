"""Servoki: ``POST {base}/api/events/server``, 202 on success, server-side dedup on event_id.

Contract: ``shared/api/servoki.txt``. 400 invalid body, 401 bad key, 404 unknown site;
600 requests per minute per egress IP.
"""

from __future__ import annotations

import functools
import re
import socket
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from relay.destinations.base import Destination, check_event_id, new_event_id
from relay.destinations.config import Option
from relay.destinations.iso4217 import CURRENCY_CODES
from relay.destinations.registry import register
from relay.errors import MISSING

KEY_PATTERN = re.compile(r"servoki_[A-Za-z0-9_\-]{8,}")
_DOMAIN = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_SITE_CODE = re.compile(r"[0-9]{1,20}")
_MAX_SAFE_INT = 2**53 - 1


@register
class Servoki(Destination):
    kind = "servoki"
    path = "/api/events/server"
    type_field = "event_type"
    success_status = 202
    key_pattern = KEY_PATTERN
    key_shape = "servoki_<key>"
    default_url = "https://servoki.com"
    url_required = "the Servoki API's base URL, such as https://servoki.com"
    default_rate_limit = "600/60s"
    options = (
        # Used when an event has no site (RELAY_SERVOKI_SITE, site in a [destinations.NAME]).
        Option("site"),
        # Servoki counts per egress IP: "global" (every host behind one NAT, the default),
        # "host" (each host its own IP), or any label naming an IP that a group of hosts
        # shares. One value for every Servoki destination: RELAY_SERVOKI_EGRESS_SCOPE.
        Option("egress_scope", "global", pattern=r"[A-Za-z0-9_.:\-]+", per_destination=False),
    )
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
        site = self.config.options.get("site")
        if "site" not in body and site is not None:
            body["site"] = site
        self._site(body.get("site", MISSING))
        self.string(body, "event_type", required=True)
        self.string(body, "vid")
        self.number(body, "value")
        self._currency(body)
        self.boolean(body, "consent")
        self._props(body)
        body["occurred_at"] = self._occurred_at(body.get("occurred_at", MISSING), now)
        if event_id is not None:
            event_id = check_event_id(self, event_id)
        if "event_id" in body:
            given = check_event_id(self, body["event_id"])
            if event_id is not None and event_id != given:
                raise self.invalid(
                    "event_id", f"the same as the event_id argument {event_id!r}", given
                )
            event_id = given
        elif event_id is not None:
            body["event_id"] = event_id
        else:
            body["event_id"] = event_id = new_event_id()
        return event_id, body

    def limit_scopes(self) -> tuple[str, ...]:
        """One bucket per egress IP: ``global`` (one NAT), ``host``, or a label hosts share."""
        scope = self.config.options.get("egress_scope", "global")
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
        # JSON readers that hold numbers as doubles (JavaScript) read a larger integer as a
        # different one, i.e. another site; a longer code can be sent as a string.
        if isinstance(site, int) and not isinstance(site, bool) and 0 <= site <= _MAX_SAFE_INT:
            return
        if isinstance(site, str) and _is_site(site):
            return
        raise self.invalid("site", 'a domain such as "shop.example.com" or a numeric code', site)

    def _currency(self, body: Mapping[str, Any]) -> None:
        value = body.get("currency", MISSING)
        if value is not MISSING and not (isinstance(value, str) and value in CURRENCY_CODES):
            raise self.invalid("currency", 'a 3-letter ISO 4217 code such as "EUR"', value)

    def _props(self, body: Mapping[str, Any]) -> None:
        value = body.get("props", MISSING)
        if value is MISSING:
            return
        if not isinstance(value, dict):
            raise self.invalid("props", "a JSON object with string keys", value)
        self.json_value("props", value)

    def _occurred_at(self, value: object, now: datetime) -> str:
        """The time to send, in the API's form; stamped ``now`` when absent."""
        if value is MISSING:
            # Stamped now: the event may wait in the queue, and "now" at delivery would be wrong.
            return utc_timestamp(now)
        when = parse_timestamp(value)
        if when is None:
            raise self.invalid("occurred_at", OCCURRED_AT_RULE, value)
        try:
            return utc_timestamp(when)
        except OverflowError:
            raise self.invalid(
                "occurred_at", "a time within the years 0001-9999 in UTC", value
            ) from None


def _is_site(site: str) -> bool:
    """Whether ``site`` is a domain or a numeric code; remembered for plain str sites (most
    events carry the one configured)."""
    return _site_shape(site) if type(site) is str else _site_pattern(site)


def _site_pattern(site: str) -> bool:
    return bool(_DOMAIN.fullmatch(site) or _SITE_CODE.fullmatch(site))


_site_shape = functools.lru_cache(maxsize=1024)(_site_pattern)


OCCURRED_AT_RULE = (
    'an aware datetime or an ISO 8601 string such as "2026-06-12T10:00:00Z" or '
    '"2026-06-12T12:00:00+02:00"'
)
# ISO 8601 extended format, calendar date, seconds, and Z or an offset: nothing else. (Python
# 3.11's datetime.fromisoformat also takes week and ordinal dates and the basic format.)
_TIMESTAMP = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]{1,9})?"
    r"(?:Z|([+-])([0-9]{2}):([0-9]{2}))"
)


def parse_timestamp(value: object) -> datetime | None:
    """An aware datetime from ``value`` (an aware datetime or a strict ISO 8601 string), or None.

    Fractional seconds are dropped: the API's form has whole seconds.
    """
    if isinstance(value, datetime):
        try:
            offset = value.utcoffset()
        except Exception:  # a caller's tzinfo whose utcoffset() is broken
            return None
        return value if offset is not None else None
    if not isinstance(value, str):
        return None
    match = _TIMESTAMP.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    sign, offset_hours, offset_minutes = match.groups()[6:]
    try:
        zone = UTC
        if sign is not None:
            if int(offset_minutes) > 59:
                return None
            offset = timedelta(hours=int(offset_hours), minutes=int(offset_minutes))
            zone = timezone(-offset if sign == "-" else offset)  # ValueError from 24:00 on
        return datetime(year, month, day, hour, minute, second, tzinfo=zone)
    except ValueError:  # no such date or time: 2026-02-30, 24:00:00, :60
        return None


def utc_timestamp(when: datetime) -> str:
    """``when`` as the API writes times: UTC, whole seconds, ``Z`` ("2026-06-12T10:00:00Z").

    Raises OverflowError when the time leaves the calendar in UTC (0001-01-01T00:30+01:00).
    """
    utc = when.astimezone(UTC)
    # %-formatting: under two thirds of the time of an f-string with six format specs.
    return "%04d-%02d-%02dT%02d:%02d:%02dZ" % (  # noqa: UP031
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
    )
