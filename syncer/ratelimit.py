"""Per-endpoint rate limits, counted the way the server counts them.

The documents give limits as requests per second; the strictest reading is "no window of one second
at the server holds more than N requests". Two rules, both in :class:`Pacer`:

- Requests are paced evenly: one every ``(1 + MARGIN) / rate`` seconds, so 96% of the rate is in
  use and requests do not queue behind each other (which is what makes arrival times bunch up).
- No more than N requests are *written* in any window of ``1 + WINDOW_MARGIN`` seconds. A slot is
  taken before the request leaves; when the HTTP layer reports that the request's first bytes were
  actually written (late, on a busy machine: the event loop, a new connection, the GIL), that time
  replaces the slot's. A late request then holds back the ones after it instead of arriving in the
  same second as them, and only the network's own jitter (up to ``WINDOW_MARGIN``) is left.

:class:`Pacer` is pure (time is an argument); :class:`AsyncRateLimiter` puts it in front of an
endpoint.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Final

# Spacing of the requests, as a share of a second: 4% keeps 96% of the documented rate in use and
# absorbs 40 ms of spread between network delays in the steady state.
MARGIN: Final = 0.04
# How late a send may be (seconds) and still keep the timeline (see Pacer.record).
CATCH_UP: Final = 1.0
# Written requests are counted over windows this much longer than a second: the network's jitter
# between two requests may be this large before the server sees N + 1 of them in one second.
WINDOW_MARGIN: Final = 0.02
# How many slots (in windows' worth) are remembered, waiting for their write times: a request
# written more than this many windows after its slot may still bunch up with later ones.
REMEMBER_WINDOWS: Final = 4


class Send:
    """One handed-out slot: when the request may leave, then when it was written."""

    __slots__ = ("at", "slot")

    def __init__(self, at: float) -> None:
        self.slot = at
        self.at = at

    def wrote(self, when: float) -> None:
        """The request's first bytes were handed to the network at ``when``."""
        self.at = max(self.at, when)


class Pacer:
    """At most one event every ``interval`` seconds, and at most ``limit`` in any ``window``."""

    def __init__(self, interval: float, limit: int, window: float) -> None:
        if interval <= 0 or limit < 1 or window <= 0:
            raise ValueError("interval and window must be > 0, limit at least 1")
        self.interval = interval
        self.limit = limit
        self.window = window
        self._last: float | None = None
        self._sends: deque[Send] = deque(maxlen=REMEMBER_WINDOWS * self.limit + 16)
        self.hold_until = 0.0  # a server's Retry-After: nothing leaves before this

    @classmethod
    def for_rate(cls, rate: float, margin: float = MARGIN) -> Pacer:
        """``rate`` requests per second, with ``margin`` seconds of slack per second. A fractional
        rate above 1 counts as its whole part: no second may hold 1.5 requests."""
        if rate <= 0:
            raise ValueError("rate must be > 0")
        whole = math.floor(rate) if rate >= 1 else rate
        limit = max(1, math.floor(rate))
        return cls((1.0 + margin) / whole, limit, limit / whole + WINDOW_MARGIN)

    def delay(self, now: float) -> float:
        """Seconds to wait before the next event may happen at ``now``."""
        held = self.hold_until - now
        if self._last is None:
            return max(0.0, held)
        return max(0.0, self._last + self.interval - now, held, self._window_delay(now))

    def _window_delay(self, now: float) -> float:
        """Until the window ending now holds fewer than ``limit`` written requests."""
        recent = sorted(s.at for s in self._sends if s.at > now - self.window)
        if len(recent) < self.limit:
            return 0.0
        return recent[len(recent) - self.limit] + self.window - now

    def hold(self, until: float) -> None:
        self.hold_until = max(self.hold_until, until)

    def record(self, now: float) -> Send:
        """A request may leave at ``now``; tell the returned :class:`Send` when it was written.
        A send up to a second later than its slot (the event loop's wake-up is never exact,
        less so on a busy machine) keeps the ideal timeline, so such delays do not pile up into
        a lower rate: the next slots come sooner until it is caught up, and the window rule
        (:meth:`delay`) still keeps any window to ``limit`` written requests. A send later
        than that (an idle endpoint) starts a new timeline."""
        if self._last is not None and 0 <= now - (self._last + self.interval) <= CATCH_UP:
            self._last += self.interval
        else:
            self._last = now
        send = Send(now)
        self._sends.append(send)
        return send


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

    async def acquire(self) -> Send:
        """Wait for the next slot; the caller reports the write time on the returned handle."""
        async with self._lock:
            while True:
                now = self._clock()
                wait = self.pacer.delay(now)
                if wait <= 0:
                    break
                self.waited += wait
                await self._sleep(wait)
            return self.pacer.record(self._clock())
