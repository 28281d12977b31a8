"""The one wall clock the state is written with: naive UTC datetimes (both state databases store
them without a time zone). Pure code takes ``now`` as an argument; this is where it comes from."""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)
