"""One retry policy for every destination: capped exponential backoff with full jitter, and the
server's ``Retry-After`` (seconds or an HTTP date) honoured up to a cap. Pure."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from email.utils import parsedate_to_datetime


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 5
    initial: float = 0.5
    maximum: float = 30.0
    retry_after_max: float = 60.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before attempt ``attempt + 1`` (attempt counts from 1): full jitter in
        [initial/2, min(maximum, initial * 2**(attempt-1))]."""
        ceiling = min(self.maximum, self.initial * (2 ** max(0, attempt - 1)))
        low = min(ceiling, self.initial / 2)
        return (rng or random).uniform(low, ceiling)

    def wait_for(self, retry_after: float | None, attempt: int,
                 rng: random.Random | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_max)
        return self.backoff(attempt, rng)


def parse_retry_after(value: str | None, now_epoch: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent
    or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - now_epoch)
