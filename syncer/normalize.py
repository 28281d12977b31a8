"""Turn database values into the values the Blux documents allow. Pure functions.

Each normaliser returns the value to send or raises :class:`Invalid` with a reason that names the
problem but never repeats the value (the value is personal data).
"""

from __future__ import annotations

import datetime as dt
import math
import re
import unicodedata
import uuid
from decimal import Decimal
from typing import Final

JsonScalar = str | int | float | bool


class Invalid(ValueError):
    """The value cannot be normalised; the message says why without quoting it."""


class Unreadable:
    """Stands for a value the database could not hand back as a Python value (text that is not
    valid UTF-8, a timestamp of 'infinity' or beyond year 9999). ``what`` says which kind, never
    the value itself. Every normaliser refuses it; it never equals anything but itself."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __repr__(self) -> str:
        return f"<unreadable {self.what}>"


# PostgreSQL's 'infinity' in a date or timestamp: a time that never comes. In a soft-delete
# column (``deleted_at DEFAULT 'infinity'``) it means "not deleted"; anywhere else it cannot be
# sent.
FOREVER: Final = Unreadable("a date or time without end")


def _refuse_unreadable(raw: object) -> None:
    if isinstance(raw, Unreadable):
        raise Invalid(f"the database cannot hand back this value ({raw.what})")


_PHONE_CHARS: Final = re.compile(r"^\+?[0-9\s().\-]+$")
_DOMESTIC: Final = re.compile(r"^(?:0[0-9]{8,10}|1[5-9][0-9]{6})$")
_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
_TRUE: Final = frozenset({"y", "yes", "true", "t", "1", "on"})
_FALSE: Final = frozenset({"n", "no", "false", "f", "0", "off"})


def user_id(raw: object) -> str:
    """The Blux ``user_id``: the key as a string, trimmed; empty is invalid."""
    if raw is None:
        raise Invalid("the key is NULL")
    if isinstance(raw, Unreadable):
        raise Invalid(f"the key cannot be read ({raw.what})")
    if isinstance(raw, bool):
        raise Invalid("the key is a boolean")
    if isinstance(raw, int | uuid.UUID):
        return str(raw)
    if isinstance(raw, Decimal) and raw.is_finite() and raw == raw.to_integral_value():
        return str(int(raw))
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid("the key is binary, not text") from None
    if not isinstance(raw, str):
        raise Invalid(f"the key is a {type(raw).__name__}, not text or a whole number")
    text = raw.strip()
    if not text:
        raise Invalid("the key is empty")
    return text


def user_id_or_none(raw: object) -> str | None:
    """:func:`user_id`, or None where the key cannot be one (the caller reports it)."""
    try:
        return user_id(raw)
    except Invalid:
        return None


def phone_number(raw: object) -> str:
    """Digits only, domestic form: ``+82 10-1234-5678``, ``010-1234-5678`` → ``01012345678``."""
    _refuse_unreadable(raw)
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise Invalid(f"a phone number must be text, not {type(raw).__name__}")
    text = unicodedata.normalize("NFKC", str(raw)).strip()
    if not text:
        raise Invalid("the phone number is empty")
    if not _PHONE_CHARS.match(text):
        raise Invalid("the phone number has characters other than digits and separators")
    digits = "".join(ch for ch in text if ch in "0123456789")
    if digits.startswith("82") and (text.startswith("+") or len(digits) >= 11):
        rest = digits[2:]
        digits = rest if rest.startswith("0") else "0" + rest
    elif text.startswith("+"):
        raise Invalid("the phone number is not a Korean number")
    if not _DOMESTIC.match(digits):
        raise Invalid("the phone number is not a valid domestic number")
    return digits


def email_address(raw: object) -> str:
    _refuse_unreadable(raw)
    if not isinstance(raw, str):
        raise Invalid(f"an e-mail address must be text, not {type(raw).__name__}")
    text = raw.strip()
    if not text:
        raise Invalid("the e-mail address is empty")
    if len(text) > 254 or not _EMAIL.match(text):
        raise Invalid("the e-mail address is not of the form name@domain.tld")
    local, _, domain = text.rpartition("@")
    return f"{local}@{domain.lower()}"


def consent(raw: object) -> bool:
    """Booleans from booleans, 0/1, 'Y'/'N', 'true'/'false' (and BIT(1) bytes)."""
    _refuse_unreadable(raw)
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, int | Decimal) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, bytes) and raw in (b"\x00", b"\x01", b"0", b"1"):
        return raw in (b"\x01", b"1")
    if isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise Invalid("a consent must be a boolean, 0/1, Y/N or true/false")
    raise Invalid(f"a consent must be a boolean, 0/1, Y/N or true/false, not {type(raw).__name__}")


def custom(raw: object) -> JsonScalar:
    """A JSON scalar: dates as ISO 8601 strings, decimals as numbers."""
    _refuse_unreadable(raw)
    if isinstance(raw, bool | str):
        return raw
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        if not math.isfinite(raw):
            raise Invalid("the number is not finite")
        return raw
    if isinstance(raw, Decimal):
        if not raw.is_finite():
            raise Invalid("the number is not finite")
        if raw == raw.to_integral_value():
            return int(raw)
        return float(raw)
    if isinstance(raw, dt.datetime | dt.date | dt.time):
        return raw.isoformat()
    if isinstance(raw, uuid.UUID):
        return str(raw)
    if isinstance(raw, bytes | bytearray | memoryview):
        raise Invalid("binary values cannot be sent")
    if isinstance(raw, dict | list | tuple):
        raise Invalid("only scalars (text, numbers, booleans, dates) can be sent")
    raise Invalid(f"a {type(raw).__name__} cannot be sent")


_DATE_LIKE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}")
# MySQL's "zero date" (NO_ZERO_DATE off): DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00' is how
# many schemas say "not set". The driver hands it back as text.
_ZERO_DATE: Final = re.compile(r"^0000-00-00(?:[ T]00:00:00(?:\.0*)?)?$")
_DELETED_WORDS: Final = _TRUE | {"deleted", "removed", "withdrawn"}


def is_zero_date(raw: object) -> bool:
    return isinstance(raw, str | bytes) and bool(_ZERO_DATE.match(
        raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw.strip()))


def is_deleted_flag(raw: object) -> bool:
    """The soft-delete column: NULL, false, 0, '', zero dates, 'infinity' and no-words mean
    alive; true,
    non-zero numbers, yes-words, dates and timestamps mean deleted. Other text (a status such as
    'active') is not a deletion: a deletion cannot be undone, so it needs a clear signal. A value
    the database cannot hand back (:class:`Unreadable`) is for the caller to refuse first."""
    if raw is None or raw is False or raw in (0, "") or is_zero_date(raw) or raw is FOREVER:
        return False
    if isinstance(raw, Unreadable):
        raise Invalid(f"the soft-delete column cannot be read ({raw.what})")
    if isinstance(raw, str):
        word = raw.strip().lower()
        return word in _DELETED_WORDS or bool(_DATE_LIKE.match(word))
    if isinstance(raw, bytes):
        return raw not in (b"", b"\x00", b"0")
    return True
