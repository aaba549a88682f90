"""Body rules of both documented APIs, as pure functions over decoded JSON.

Each failure raises :class:`InvalidBody` whose message names the field and what was wrong, so a
400 from the sandbox tells the relay's author exactly which rule a payload broke.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Final

from relay.destinations.iso4217 import CURRENCY_CODES as ISO_4217_CODES
from relay.queue.wire import strict_json

SERVOKI_FIELDS: Final = frozenset(
    {
        "site",
        "event_type",
        "vid",
        "value",
        "currency",
        "event_id",
        "occurred_at",
        "props",
        "consent",
    }
)
DATALOOK_FIELDS: Final = frozenset(
    {"event_name", "page_path", "name", "success_user_id", "success_value", "properties"}
)
DATALOOK_EVENT_NAMES: Final = frozenset({"pageview", "click", "success", "custom"})
PII_MARKERS: Final = ("email", "phone", "password", "ssn")

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_DOMAIN_RE = re.compile(rf"^(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})+\Z")
_DIGITS_RE = re.compile(r"^[0-9]+\Z")
_TIMESTAMP_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.[0-9]+)?"
    r"(?:Z|[+-]([0-9]{2}):([0-9]{2}))"
)


class InvalidBody(ValueError):
    """The request body breaks a documented rule; ``field`` names the culprit (or ``body``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def decode_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    try:
        body = strict_json(raw)
    except ValueError as exc:
        # JSONDecodeError and UnicodeDecodeError are ValueErrors, and so are NaN and Infinity
        # (json.loads takes them; neither API does) and an integer of more than 4,300 digits
        # (Python's limit on int parsing).
        raise InvalidBody("body", f"body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # [[[[… nested deeper than the parser's stack
        raise InvalidBody("body", "body is not valid JSON: nested too deeply") from exc
    if not isinstance(body, dict):
        raise InvalidBody("body", f"body must be a JSON object, got {type(body).__name__}")
    return body


def _is_finite(value: int | float) -> bool:
    # math.isfinite(10**400) raises OverflowError: such a number is infinite as a double.
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and _is_finite(value)


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _reject_unreadable(body: dict[str, Any]) -> None:
    """Numbers must be finite doubles and text valid Unicode, anywhere in the body.

    JSON allows 1e400 and 1 followed by 400 zeros, but a double reads them as infinity; an
    escaped lone surrogate ("\\ud800") decodes to text no UTF-8 store can hold.
    """
    stack: list[tuple[str, Any]] = [(name, value) for name, value in body.items()]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                if not _is_unicode(key):
                    raise InvalidBody(path, f"{path} has a key that is not valid Unicode: {key!r}")
                stack.append((f"{path}.{key}", item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{index}]", item) for index, item in enumerate(value))
        elif isinstance(value, str) and not _is_unicode(value):
            raise InvalidBody(path, f"{path} must be valid Unicode text, got {value!r}")
        elif isinstance(value, int | float) and not _is_finite(value):
            raise InvalidBody(path, f"{path} must be a finite number, got {value!r}")


def _reject_unknown(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidBody(unknown[0], f"unknown field(s): {', '.join(unknown)}")


def _optional_string(body: dict[str, Any], name: str, *, non_empty: bool = False) -> None:
    if name not in body:
        return
    value = body[name]
    if not isinstance(value, str) or (non_empty and not value):
        kind = "a non-empty string" if non_empty else "a string"
        raise InvalidBody(name, f"{name} must be {kind}, got {value!r}")


def servoki_site(body: dict[str, Any]) -> str:
    """Validate a Servoki body and return its site, normalised for lookup."""
    _reject_unknown(body, SERVOKI_FIELDS)
    _reject_unreadable(body)
    if "site" not in body:
        raise InvalidBody("site", "site is required (your domain or numeric site code)")
    site = body["site"]
    if isinstance(site, int) and not isinstance(site, bool) and site >= 0:
        normalised = str(site)
    elif isinstance(site, str) and (_DIGITS_RE.match(site) or _DOMAIN_RE.match(site.lower())):
        normalised = site.lower()
    else:
        raise InvalidBody("site", f"site must be a domain or numeric site code, got {site!r}")
    if "event_type" not in body:
        raise InvalidBody("event_type", 'event_type is required, e.g. "purchase"')
    _optional_string(body, "event_type", non_empty=True)
    _optional_string(body, "vid")
    _optional_string(body, "event_id", non_empty=True)
    if "value" in body and not _is_number(body["value"]):
        raise InvalidBody("value", f"value must be a finite number, got {body['value']!r}")
    if "currency" in body:
        currency = body["currency"]
        if not isinstance(currency, str) or currency not in ISO_4217_CODES:
            raise InvalidBody(
                "currency",
                f'currency must be a 3-letter ISO 4217 code such as "EUR", got {currency!r}',
            )
    if "occurred_at" in body and not _is_timestamp(body["occurred_at"]):
        raise InvalidBody(
            "occurred_at",
            f'occurred_at must be an ISO 8601 timestamp such as "2026-06-12T10:00:00Z", '
            f"got {body['occurred_at']!r}",
        )
    if "props" in body and not isinstance(body["props"], dict):
        raise InvalidBody("props", f"props must be a JSON object, got {body['props']!r}")
    if "consent" in body and not isinstance(body["consent"], bool):
        raise InvalidBody("consent", f"consent must be true or false, got {body['consent']!r}")
    return normalised


def _is_timestamp(value: Any) -> bool:
    """An ISO 8601 date and time in extended format with seconds and Z or an offset.

    Stricter than datetime.fromisoformat, which also takes week dates (2026-W24-5), ordinal
    dates, the basic format (20260612T100000Z) and times without any offset.
    """
    match = _TIMESTAMP_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        return False
    year, month, day, hour, minute, second, offset_hour, offset_minute = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), int(second))
    except ValueError:  # 2026-02-30, 24:00:00, a leap second
        return False
    return offset_hour is None or (int(offset_hour) <= 23 and int(offset_minute) <= 59)


def datalook_event(body: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """Validate a DataLook body; return it as stored (PII keys stripped) and how many were."""
    _reject_unknown(body, DATALOOK_FIELDS)
    _reject_unreadable(body)
    event_name = body.get("event_name")
    if not isinstance(event_name, str) or event_name not in DATALOOK_EVENT_NAMES:
        choices = ", ".join(sorted(DATALOOK_EVENT_NAMES))
        if "event_name" not in body:
            raise InvalidBody("event_name", f"event_name is required, one of {choices}")
        raise InvalidBody("event_name", f"event_name must be one of {choices}, got {event_name!r}")
    if "page_path" not in body:
        raise InvalidBody("page_path", 'page_path is required, e.g. "/checkout/success"')
    _optional_string(body, "page_path", non_empty=True)
    if event_name == "success" and "name" not in body:
        raise InvalidBody(
            "name", 'name (the success rule name) is required when event_name is "success"'
        )
    _optional_string(body, "name", non_empty=True)
    _optional_string(body, "success_user_id")
    if "success_value" in body and not _is_number(body["success_value"]):
        raise InvalidBody(
            "success_value", f"success_value must be a finite number, got {body['success_value']!r}"
        )
    if "properties" not in body:
        return body, 0
    properties = body["properties"]
    if not isinstance(properties, dict):
        raise InvalidBody(
            "properties", f"properties must be a flat JSON object, got {properties!r}"
        )
    kept: dict[str, Any] = {}
    for key, value in properties.items():
        if not (isinstance(value, str | bool) or _is_number(value)):
            raise InvalidBody(
                f"properties.{key}",
                f"properties.{key} must be a string, number or boolean, got {value!r}",
            )
        lowered = key.lower()
        if not any(marker in lowered for marker in PII_MARKERS):
            kept[key] = value
    stripped = len(properties) - len(kept)
    if stripped:
        body = {**body, "properties": kept}
    return body, stripped
