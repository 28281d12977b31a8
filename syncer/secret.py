"""Secrets and redaction: values that must never reach a log, an error or the state DB."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import parse_qsl, quote_plus, unquote_plus

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MASK: Final = "********"


class Secret:
    """A string whose repr and str are masked; ``reveal()`` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return repr(MASK)

    def __str__(self) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


def redact_url(url: str) -> str:
    """A database URL fit for a log line: the password, and any password-like query parameter
    (``?password=``, ``sslpassword``, ``passwd``, ``token``, ``password=`` inside ``options``...),
    replaced by ``***``."""
    try:
        rendered = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        rendered = re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)
    head, query = _split_query(rendered)
    if query is None:
        return rendered
    return head + "?" + "&".join(_redact_param(part) for part in query.split("&"))


def url_secrets(url: str) -> tuple[str, ...]:
    """The secrets a database URL carries: its password and the values of password-like query
    parameters (for the log scrubber)."""
    found: list[str] = []
    try:
        password = make_url(url).password
        if password:
            found.append(str(password))
    except (ArgumentError, ValueError):
        pass
    _, query = _split_query(url)
    for key, value in parse_qsl(query or "", keep_blank_values=True):
        if _SECRET_NAME.search(key):
            found.append(value)
        else:
            found += [_unquote(m.group(2)) for m in _EMBEDDED_SECRET.finditer(value)]
    return tuple(v for v in found if v)


# Names of query parameters (or libpq conninfo keys inside one) that carry a secret.
_SECRET_NAME = re.compile(r"passw(?:or)?d|pwd|secret|token", re.IGNORECASE)
# ``password=...`` inside a parameter's value (libpq conninfo in ``dsn``, ``-c`` in ``options``).
_EMBEDDED_SECRET = re.compile(
    r"(\b\w*(?:passw(?:or)?d|pwd|secret|token)\w*\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s&]*)",
    re.IGNORECASE)


_USERINFO = re.compile(r"[\w+]+://(?:[^:/@]*(?::[^@]*)?@)?")


def _split_query(url: str) -> tuple[str, str | None]:
    """The URL without its query, and the query (``None`` when there is none). The query starts
    at the first ``?`` after the user info (a password may hold a ``?``)."""
    userinfo = _USERINFO.match(url)
    at = url.find("?", userinfo.end() if userinfo else 0)
    if at < 0:
        return url, None
    return url[:at], url[at + 1:].split("#", 1)[0]


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return re.sub(r"\\(.)", r"\1", value[1:-1])
    return value


def _redact_param(part: str) -> str:
    key, sep, value = part.partition("=")
    if not sep:
        return part
    if _SECRET_NAME.search(unquote_plus(key)):
        return f"{key}=***"
    plain = unquote_plus(value)
    masked = _EMBEDDED_SECRET.sub(lambda m: m.group(1) + "***", plain)
    return part if masked == plain else f"{key}={quote_plus(masked, safe='*=')}"


# Personal data that could slip into a message from a database or an API: e-mail addresses and
# anything shaped like a phone number (8 or more digits, with the usual separators).
# (not the user@host of a URL: no "/" right before it, and an alphabetic top-level domain)
_EMAIL = re.compile(r"(?<![\w.+/-])[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
# Phone numbers: international ones (a "+" and at least eight digits) and domestic ones (a 0, then
# the usual groups). Dates, times, counts and ids (which do not start with 0) are left alone.
_PHONE = re.compile(
    r"(?<![\w.:+/-])(?:\+\d[\d\s().-]{6,}\d"
    r"|\(?0\d{1,2}\)?[\s.-]?\d{3,4}[\s.-]?\d{4})(?![\w.:-]*\d)")


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove secrets, e-mail addresses and phone-like digit runs from free text."""
    for value in secrets:
        if value and len(value) >= 4:
            text = text.replace(value, MASK)
    text = _EMAIL.sub("<email>", text)
    return _PHONE.sub(_phone_or_keep, text)


def _phone_or_keep(match: re.Match[str]) -> str:
    digits = sum(ch.isdigit() for ch in match.group(0))
    return "<phone>" if 8 <= digits <= 15 else match.group(0)
