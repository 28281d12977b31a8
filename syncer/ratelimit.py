"""Per-endpoint rate limits, counted the way the server counts them.

The documents give limits as requests per second; the strictest reading is "no window of one second
at the server holds more than N requests". Requests are paced evenly: one every
``(1 + margin) / rate`` seconds. Then any N + 1 consecutive requests span at least ``1 + margin``
seconds when they leave, so the server counts at most N in any second unless the network delays
the first of them by ``margin`` seconds more than the last. Even pacing also keeps requests from
queueing behind each other, which is what makes arrival times bunch up. :class:`Pacer` is pure (time
is an argument); :class:`AsyncRateLimiter` puts it in front of an endpoint.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

# Tolerated spread of network delays between requests, as a share of a second. 5% keeps 95% of the
# documented rate in use and absorbs 50 ms of jitter.
MARGIN: Final = 0.05
# How late a send may be and still count as on time (see Pacer.record).
SLACK: Final = 0.005


class Pacer:
    """At most one event every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        self.interval = interval
        self._last: float | None = None
        self.hold_until = 0.0  # a server's Retry-After: nothing leaves before this

    @classmethod
    def for_rate(cls, rate: float, margin: float = MARGIN) -> Pacer:
        """``rate`` requests per second, with ``margin`` seconds of slack per second. A fractional
        rate above 1 counts as its whole part: no second may hold 1.5 requests."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        whole = math.floor(rate) if rate >= 1 else rate
        return cls((1.0 + margin) / whole)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event may happen at ``now``."""
        held = self.hold_until - now
        if self._last is None:
            return max(0.0, held)
        return max(0.0, self._last + self.interval - now, held)

    def hold(self, until: float) -> None:
        self.hold_until = max(self.hold_until, until)

    def record(self, now: float) -> None:
        """A request left at ``now``. A send a few milliseconds later than its slot (the event
        loop's wake-up is never exact) keeps the ideal timeline, so small delays do not pile up
        into a lower rate; any N + 1 consecutive requests still span N slots less ``SLACK``."""
        if self._last is not None and 0 <= now - (self._last + self.interval) <= SLACK:
            self._last += self.interval
        else:
            self._last = now


class AsyncRateLimiter:
    """Hands out send slots of one :class:`Pacer` in arrival order. The pacer outlives passes
    (it belongs to the process), so back-to-back passes stay paced too."""

    def __init__(self, pacer: Pacer, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.pacer = pacer
        self._clock = clock
        self._sleep = sleep
        self._lock = asyncio.Lock()
        self.waited = 0.0  # total seconds spent waiting for a slot

    def pause_until(self, when: float) -> None:
        self.pacer.hold(when)

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                wait = self.pacer.delay(now)
                if wait <= 0:
                    break
                self.waited += wait
                await self._sleep(wait)
            self.pacer.record(self._clock())
