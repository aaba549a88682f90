"""The protocol every destination module implements, and the checks they share.

A destination answers four questions: is this payload valid (``prepare``), what request
carries it (``build_request``), what does a response mean (``classify``), and which
rate-limit scopes a request consumes (``limit_scopes``). Nothing else knows an API's details:
the class also declares its key shape, default URL and limit, documented success and settings
of its own, which the settings read through the registry (:mod:`relay.destinations.registry`).
This module imports no HTTP client: the enqueue path uses ``prepare`` only.
"""

from __future__ import annotations

import email.utils
import importlib.metadata
import math
import os
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

from relay.destinations.config import DestinationConfig, Option
from relay.destinations.outcome import Outcome
from relay.errors import MISSING, InvalidEvent, show


def _version() -> str:
    # The installed distribution's version, read without importing the relay package (whose
    # root imports enqueue, which imports the destinations).
    try:
        return importlib.metadata.version("relay")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown"


USER_AGENT = f"relay/{_version()} (+event relay)"


@dataclass(frozen=True)
class HttpRequest:
    """A request to send, described without any HTTP library."""

    method: str
    url: str
    headers: dict[str, str] = field(repr=False)
    body: bytes


class Destination:
    """Base of the destination modules; subclasses fill in the API's details.

    A subclass is made known with :func:`relay.destinations.register`.
    """

    kind: ClassVar[str]
    """The name of the kind: ``kind = "…"`` in ``[destinations.NAME]``, ``RELAY_<KIND>_*``."""
    path: ClassVar[str]
    """Appended to the configured base URL for every event."""
    success_status: ClassVar[int]
    """The documented answer to a delivered event; any other 2xx or 3xx pauses."""
    fields: ClassVar[tuple[str, ...]]
    """The payload's allowed fields."""
    type_field: ClassVar[str | None] = None
    """The field that names the event's type (Servoki ``event_type``), if the API has one."""
    key_pattern: ClassVar[re.Pattern[str]]
    """The documented shape of an API key (the whole key must match)."""
    key_shape: ClassVar[str]
    """The shape as messages show it, such as ``dl_live_<key_id>_<secret>``."""
    key_rule: ClassVar[str] = "a key of at least 8 letters, digits, _ or -"
    """What ``key_pattern`` asks for, in words."""
    default_url: ClassVar[str | None] = None
    """The API's base URL when it is the same for every account (None: it must be set)."""
    url_required: ClassVar[str] = "copy the API's base URL from its dashboard"
    """Why a URL must be configured and where to find it (when there is no default)."""
    default_rate_limit: ClassVar[str]
    """The documented limit, such as ``"600/60s"``."""
    options: ClassVar[tuple[Option, ...]] = ()
    """Settings of the API's own (read from ``config.options``)."""

    @classmethod
    def key_is_well_formed(cls, key: str) -> bool:
        """Whether ``key`` has the documented shape of this API's keys."""
        return cls.key_pattern.fullmatch(key) is not None

    def __init__(self, config: DestinationConfig) -> None:
        self.config = config
        self.name = config.name

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.config.url}>"

    # -- 1. is this payload valid? --------------------------------------------------

    def prepare(
        self, payload: Mapping[str, Any], event_id: str | None, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        """Check ``payload``, stamp what is missing; return (event_id, body to send)."""
        raise NotImplementedError

    # -- 2. what request carries it? -------------------------------------------------

    def build_request(self, body_bytes: bytes) -> HttpRequest:
        """The POST for one event whose JSON body is ``body_bytes``."""
        return HttpRequest(
            "POST",
            self.config.url + self.path,
            {
                "Authorization": f"Bearer {self.config.api_key.get_secret_value()}",
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            body_bytes,
        )

    # -- 3. what does this response mean? --------------------------------------------

    def classify(self, status: int, headers: Mapping[str, str], body: str) -> Outcome:
        """Map an HTTP response to an outcome.

        Only the documented success (``success_status``) is a delivery. Any other 2xx or a
        3xx is not this API answering (a website, a proxy, a moved host at a mistyped URL):
        the destination pauses with the URL setting named, and the events wait. 401 and 403
        pause too: the key is refused (403, which neither spec documents, is taken as "this
        key may not send here", which resending cannot fix either). 408, 429 and 5xx retry;
        any other 4xx is dead.
        """
        if status == self.success_status:
            return Outcome.delivered(status)
        detail = self.redact(body.strip()) or f"HTTP {status}"
        if 200 <= status < 400:
            return Outcome.pause(status, detail, self.misdirected(status, headers))
        if status in (401, 403):
            return Outcome.pause(status, detail)
        if status == 429:
            return Outcome.retry(
                status, detail, retry_after=parse_retry_after(headers), throttled=True
            )
        if status == 408 or status >= 500:
            return Outcome.retry(status, detail, retry_after=parse_retry_after(headers))
        return Outcome.dead(status, detail)

    def misdirected(self, status: int, headers: Mapping[str, str]) -> str:
        """Why an answer that is not this API's means the URL is wrong, and what to do."""
        kind = headers.get("content-type") or "no content type"
        where = (
            f", to {headers['location']}" if 300 <= status < 400 and "location" in headers else ""
        )
        setting = self.config.url_setting or "the destination's URL"
        return (
            f"{setting} ({self.config.url}) answered HTTP {status} ({kind}{where}), not the "
            f"{self.kind} API's {self.success_status}: nothing was delivered; fix the URL, "
            f"then `relay destinations resume {self.name}`"
        )

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never be kept or logged: the key (subclasses add its parts).

        The settings refuse keys whose secret is too short to tell apart from ordinary text,
        so every string here is redacted wherever it appears.
        """
        return (self.config.api_key.get_secret_value(),)

    def redact(self, text: str) -> str:
        """``text`` with every secret of this destination replaced by ``***``.

        The one redaction: response bodies, logs, exceptions and CLI output all pass through
        it. An API that echoes the Authorization header back (a proxy's error page, a
        debugging endpoint) must not put the key there.
        """
        # Longest first: the whole key goes as one, not as its prefix around a masked secret.
        for secret in sorted(self.secrets(), key=len, reverse=True):
            if secret:
                text = text.replace(secret, "***")
        return text

    # -- 4. which rate-limit scopes does a request consume? --------------------------

    def limit_scopes(self) -> tuple[str, ...]:
        raise NotImplementedError

    # -- shared checks ---------------------------------------------------------------
    # Each check is total: any Python value either passes or raises InvalidEvent naming the
    # field, never TypeError (["EUR"] in a set), OverflowError (10**400 as a float) or the like.

    def invalid(self, name: str, expected: str, got: object) -> InvalidEvent:
        return InvalidEvent(f"{self.name}.{name}", expected, got)

    def reject_unknown_fields(self, payload: Mapping[str, Any]) -> None:
        for key in payload:
            if key not in self.fields:
                raise self.invalid(
                    field_name(key),
                    f"absent: it is not a {self.kind} field (allowed: {', '.join(self.fields)})",
                    payload[key],
                )

    def string(
        self,
        payload: Mapping[str, Any],
        name: str,
        *,
        required: bool = False,
        non_empty: bool = False,
    ) -> None:
        """``name`` is a string (``required``: present; ``non_empty``: not blank when given)."""
        value = payload.get(name, MISSING)
        if value is MISSING and not required:
            return
        expected = "a non-empty string" if required or non_empty else "a string"
        if not isinstance(value, str) or ((required or non_empty) and not value.strip()):
            raise self.invalid(name, expected, value)
        if not is_unicode(value):
            raise self.invalid(name, f"{expected} of {UNICODE_TEXT}", value)

    def number(self, payload: Mapping[str, Any], name: str) -> None:
        value = payload.get(name, MISSING)
        if value is MISSING:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.invalid(name, "a number such as 49.90", value)
        if not is_finite(value):
            raise self.invalid(name, "a finite number", value)

    def boolean(self, payload: Mapping[str, Any], name: str) -> None:
        value = payload.get(name, MISSING)
        if value is not MISSING and not isinstance(value, bool):
            raise self.invalid(name, "true or false", value)

    def key(self, name: str, expected: str, key: object) -> None:
        """``key`` of the object ``name`` is a string JSON and UTF-8 can carry."""
        if not isinstance(key, str):
            raise self.invalid(name, expected, key)
        if not is_unicode(key):
            raise self.invalid(name, f"{expected} of {UNICODE_TEXT}", key)

    def json_value(self, name: str, value: object, depth: int = 1) -> None:
        """``value`` is JSON the API reads as given and the outbox stores: finite numbers,
        valid Unicode, string keys, at most ``MAX_DEPTH`` levels (which also stops cycles)."""
        if value is None or isinstance(value, bool):
            return
        if isinstance(value, int | float):
            if not is_finite(value):
                raise self.invalid(name, "a finite number", value)
        elif isinstance(value, str):
            if not is_unicode(value):
                raise self.invalid(name, f"a string of {UNICODE_TEXT}", value)
        elif isinstance(value, list | dict):
            if depth > MAX_DEPTH:
                raise self.invalid(name, f"JSON nested at most {MAX_DEPTH} levels deep", value)
            self._members(name, value, depth)
        else:
            raise self.invalid(
                name,
                "a JSON value (null, true/false, a number, a string, a list or an object)",
                value,
            )

    def _members(self, name: str, value: list[Any] | dict[Any, Any], depth: int) -> None:
        # A member's name is built only for a member that is not a plain scalar: enqueue() runs
        # this on every event, and most members are.
        if isinstance(value, list):
            for index, item in enumerate(value):
                if not is_plain_scalar(item):
                    self.json_value(f"{name}[{index}]", item, depth + 1)
            return
        for key, item in value.items():
            if type(key) is not str or not key.isascii():
                self.key(name, "a JSON object with string keys", key)
            if not is_plain_scalar(item):
                self.json_value(f"{name}.{key}", item, depth + 1)


MAX_DEPTH = 32
"""How deeply JSON objects and lists in a payload may nest (the payload itself is level 1)."""

MAX_EVENT_ID_LENGTH = 200
"""The outbox's ``event_id`` column is ``String(200)``: PostgreSQL refuses longer ids."""

UNICODE_TEXT = "valid Unicode (no lone surrogate such as \\ud800)"
EVENT_ID_RULE = (
    f"a non-empty string of at most {MAX_EVENT_ID_LENGTH} characters, "
    "without NUL (\\x00) or lone surrogates"
)


def check_event_id(dest: Destination, event_id: object) -> str:
    """An event id is what the outbox's ``event_id`` column stores on every database.

    PostgreSQL text cannot hold NUL (the insert fails) and UTF-8 cannot carry a lone
    surrogate (the driver fails), so either would fail the drain's whole batch.
    """
    if (
        not isinstance(event_id, str)
        or not event_id.strip()
        or len(event_id) > MAX_EVENT_ID_LENGTH
        or "\x00" in event_id
        or not is_unicode(event_id)
    ):
        raise dest.invalid("event_id", EVENT_ID_RULE, event_id)
    return event_id


def new_event_id() -> str:
    """A fresh, unique event id (UUID4 hex)."""
    # uuid.uuid4().hex without building a UUID object (under half the time): 16 random bytes
    # with RFC 4122's version (4) and variant bits set, as uuid.UUID(version=4) sets them.
    return "%032x" % (int.from_bytes(os.urandom(16)) & _UUID4_KEEP | _UUID4_SET)


_UUID4_KEEP = ~((0xC000 << 48) | (0xF000 << 64)) & (1 << 128) - 1
_UUID4_SET = (0x8000 << 48) | (0x4000 << 64)


def is_finite(value: int | float) -> bool:
    """Whether a JSON reader gets a finite number: 10**400 is a Python int, but infinite as a
    double (JavaScript's, PostgreSQL's float8) and ``math.isfinite`` raises OverflowError."""
    try:
        # int.__float__ / float.__float__: a subclass's own __float__ cannot lie about the value
        # that json.dumps writes.
        as_float = int.__float__(value) if isinstance(value, int) else float.__float__(value)
    except OverflowError:
        return False
    return math.isfinite(as_float)


def is_unicode(text: str) -> bool:
    """Whether ``text`` encodes as UTF-8, i.e. holds no lone surrogate (``"\\ud800"``)."""
    if text.isascii():  # most text, checked without making a copy
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_INF = float("inf")
_WIDE_INT = 2**1000
"""Well inside the doubles' range (about 2**1024): an int within it is a finite double."""


def is_plain_scalar(value: object) -> bool:
    """A quick yes for the common JSON scalars that every check accepts: ``None``, a bool, an
    exact int or finite float well within a double's range, ASCII text. False means "check it"."""
    if value is None or value is True or value is False:
        return True
    kind = type(value)
    if isinstance(value, str):
        return kind is str and value.isascii()
    if isinstance(value, int):
        return kind is int and -_WIDE_INT < value < _WIDE_INT
    if isinstance(value, float):
        return kind is float and -_INF < value < _INF
    return False


def field_name(key: object) -> str:
    """A payload key as it appears in an error's field name."""
    return key if isinstance(key, str) and is_unicode(key) else show(key)


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), if any."""
    raw = headers.get("retry-after") or headers.get("Retry-After")
    if not raw:
        return None
    raw = raw.strip()
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - time.time())
