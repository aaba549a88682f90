"""Redis and database URLs in messages: one rule that hides their credentials.

``redis://user:pw@host/0?password=pw`` is shown as ``redis://user:***@host/0?password=***``:
the password of the userinfo (the whole userinfo when it has no ``user:`` part: a lone name
there may be a token) and the value of every query parameter named like a credential
(``password``, ``sslpassword``, ``passfile``, ``sslkey``, ``token``, ``secret``…) are masked.
Every scheme the relay takes (``redis``, ``rediss``, ``unix``, ``postgresql+psycopg``,
``sqlite``) follows the same rule.

The URL is split by hand, not by urllib: a password with an unescaped ``/``, ``#`` or ``@``
must not slip into the host part of a message. Imports nothing heavy (enqueue() uses it).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

MASK = "***"
_CREDENTIAL_NAME = re.compile(r"pass|pwd|secret|token|key|auth|cred", re.IGNORECASE)


def safe_url(url: str) -> str:
    """``url`` with its credentials masked, fit for a message."""
    prefix, userinfo, location, query = _split(url)
    shown = prefix
    if userinfo is not None:
        user, colon, _ = userinfo.partition(":")
        shown += f"{user}:{MASK}@" if colon and user else f"{MASK}@"
    shown += location
    if query is not None:
        pairs = []
        for pair in query.split("&"):
            name, equals, _ = pair.partition("=")
            pairs.append(f"{name}={MASK}" if equals and _is_credential(name) else pair)
        shown += "?" + "&".join(pairs)
    return shown


def credentials(url: str) -> list[str]:
    """The secret strings of ``url`` as written and decoded, longest first."""
    _, userinfo, _, query = _split(url)
    found: set[str] = set()
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        secret = password if colon and user else userinfo
        found.update((secret, unquote(secret)))
    for pair in (query or "").split("&"):
        name, equals, value = pair.partition("=")
        if equals and _is_credential(name):
            found.update((value, unquote_plus(value)))
    return sorted((s for s in found if s), key=len, reverse=True)


def scrub(text: str, *urls: str) -> str:
    """``text`` (an error message) with every credential of ``urls`` masked."""
    for url in urls:
        for secret in credentials(url):
            text = text.replace(secret, MASK)
    return text


def describe_error(exc: BaseException, *urls: str, limit: int | None = 300) -> str:
    """``ErrorClass: first line`` of ``exc`` (its driver's error, for a SQLAlchemy one) without
    any credential of ``urls``, cut to ``limit`` characters (None: not cut, for a caller that
    masks more before cutting: a secret cut in half would no longer be found)."""
    cause: BaseException = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    described = f"{type(cause).__name__}: {scrub(first, *urls)}"
    return described if limit is None else described[:limit]


def _is_credential(name: str) -> bool:
    return _CREDENTIAL_NAME.search(unquote_plus(name)) is not None


def _split(url: str) -> tuple[str, str | None, str, str | None]:
    """(``scheme://``, userinfo or None, host and path, query or None)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        scheme, rest = "", url
    before_query, question, query = rest.partition("?")
    # ``scheme:///path`` has no authority, so an @ in its path is no userinfo.
    userinfo, at, location = ("", "", before_query)
    if not before_query.startswith("/"):
        userinfo, at, location = before_query.rpartition("@")
    return (
        scheme + separator,
        userinfo if at else None,
        location,
        query if question else None,
    )
