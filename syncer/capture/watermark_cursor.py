"""Watermark values and the cursor: a value of the watermark column (a timestamp, a date, ISO
text in either layout) kept in the state with its type and full precision, moved back by the
lookback in its own form, and compared by the time it stands for. Pure."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from syncer.errors import ConfigError


def encode(value: object) -> str:
    """A watermark value as text for the state, keeping its type and full precision."""
    if value is None:
        return json.dumps({"t": "none"})
    if isinstance(value, dt.datetime):
        return json.dumps({"t": "datetime", "v": value.isoformat(), "tz": value.tzinfo is not None})
    if isinstance(value, dt.date):
        return json.dumps({"t": "date", "v": value.isoformat()})
    if isinstance(value, str):
        return json.dumps({"t": "text", "v": value})
    raise ConfigError(f"[capture] watermark_column holds {type(value).__name__} values; it must be "
                      "a timestamp (or ISO 8601 text). For version counters use mode = \"outbox\".")


def decode(text: str) -> object:
    data = json.loads(text)
    kind = data["t"]
    if kind == "none":
        return None
    if kind == "datetime":
        return dt.datetime.fromisoformat(data["v"])
    if kind == "date":
        return dt.date.fromisoformat(data["v"])
    return str(data["v"])


def shift(value: object, seconds: float) -> object:
    """``value`` moved back by ``seconds``, in the same type (and text format)."""
    if value is None or seconds == 0:
        return value
    delta = dt.timedelta(seconds=seconds)
    if isinstance(value, dt.datetime):
        return value - delta
    if isinstance(value, dt.date):
        return value - dt.timedelta(days=max(1, -(-int(seconds) // 86400)))
    if isinstance(value, str):
        return _shift_text(value, delta)
    raise TypeError(type(value).__name__)


def _shift_text(text: str, delta: dt.timedelta) -> str:
    """Shift an ISO 8601 timestamp written as text, keeping its layout, so that it still compares
    as text with the column's other values."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError("[capture] watermark_column holds text that is not ISO 8601 "
                          "(e.g. 2026-11-27 09:00:00.123456); text timestamps must be ISO "
                          "8601 to be compared") from None
    moved = moment - delta
    if len(text) == 10:  # a date
        return moved.date().isoformat()
    sep = text[10] if len(text) > 10 else " "
    out = moved.strftime("%Y-%m-%d") + sep + moved.strftime("%H:%M:%S")
    rest = text[19:]
    if rest.startswith("."):
        digits = len(rest[1:]) - len(rest[1:].lstrip("0123456789"))
        out += "." + f"{moved.microsecond:06d}".ljust(digits, "0")[:digits]
    if text.endswith("Z"):
        out += "Z"
    elif moved.tzinfo is not None:
        offset = moved.isoformat()[-6:]
        out += offset
    return out


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the watermark stands: a value of the column, when (our clock) it became the newest,
    and whether rows at that value are settled (read strictly after it from now on)."""

    value: object
    seen: float
    exclusive: bool

    def low(self, lookback: float) -> tuple[object, bool]:
        """The bound of the next read, and whether it is exclusive."""
        if self.exclusive:
            return self.value, True
        return shift(self.value, lookback), False

    def encode(self) -> str:
        return json.dumps({"value": encode(self.value), "seen": self.seen,
                           "exclusive": self.exclusive})

    @classmethod
    def decode(cls, text: str) -> Cursor:
        data = json.loads(text)
        return cls(decode(data["value"]), float(data["seen"]), bool(data["exclusive"]))


def comparable(value: object) -> dt.datetime | None:
    """A watermark value as something that orders by time whatever its form: ISO text in
    either layout ('2026-12-04T10:00' or '2026-12-04 10:00'), a date (its midnight), an aware
    time in UTC. None for NULL and for what cannot be read or parsed."""
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
    if isinstance(value, dt.date):
        return dt.datetime.combine(value, dt.time())
    return None


def before(a: object, b: object) -> bool:
    left, right = comparable(a), comparable(b)
    return left is not None and right is not None and left < right


def is_date(value: object) -> bool:
    """A day without a time: rows stamped later the same day carry the same value, so a read
    may never be strictly after it."""
    if isinstance(value, str):
        return len(value.strip()) == 10
    return isinstance(value, dt.date) and not isinstance(value, dt.datetime)


def blind_spots(low: object) -> list[tuple[object, object]]:
    """Text compares character by character, and ' ' sorts before 'T': with a bound in the
    '2026-12-04T10:00' layout, a row written '2026-12-04 10:05' would not be read. The range of
    that day's ' ' layout is read too (empty where the column keeps one layout)."""
    if isinstance(low, str) and len(low) > 10 and low[10] == "T":
        day = low[:10]
        return [(day + " ", day + "T")]
    return []


