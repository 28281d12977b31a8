"""Secrets and redaction: values that must never reach a log, an error or the state DB."""

from __future__ import annotations

import re
from typing import Final

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
    """A database URL fit for a log line: the password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


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
