"""What passes share for the life of a process: the config, the source, the state, the mapping, the
destinations' senders and pacers, and the threads database work runs in. Open once, run many
passes (:mod:`syncer.pipeline`), close."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import httpx

from syncer import __version__, fingerprint_key
from syncer.capture import Capture, CaptureContext
from syncer.capture.blind_spots import blind_spots
from syncer.capture.outbox import OutboxCapture
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark import WatermarkCapture
from syncer.capture.watermark_tables import TablesWatermarkCapture
from syncer.config import Config
from syncer.deliver import NullObserver, Observer
from syncer.destinations import Sender
from syncer.destinations.blux import BluxDelete, BluxUpdate
from syncer.destinations.nachocode import NachocodeWithdraw
from syncer.mapping import Mapping
from syncer.model import Endpoint
from syncer.ratelimit import Pacer
from syncer.retry import RetryPolicy
from syncer.source import Source
from syncer.state import StateStore
from syncer.state.sql import SqlStateStore

T = TypeVar("T")

# How long the count of known users (for the safety valve) is reused: it moves slowly, and
# counting a large state takes a while.
KNOWN_USERS_TTL = 300.0
CAPTURE_TTL = 300.0


def build_senders(config: Config) -> list[Sender]:
    senders: list[Sender] = []
    if config.blux:
        senders += [BluxUpdate(config.blux), BluxDelete(config.blux)]
    if config.nachocode:
        senders.append(NachocodeWithdraw(config.nachocode))
    return senders


class Heartbeat:
    """Whether work is moving, for the watchdog: the last sign of progress, and the database
    calls in progress (a hung query must stop the watchdog's pings, so while one runs only the
    call itself proves progress)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.busy = 0            # database calls in progress
        self.busy_since = 0.0    # when the oldest of them started

    def beat(self) -> None:
        self.last = time.monotonic()

    def enter(self) -> None:
        self.busy += 1
        if self.busy == 1:
            self.busy_since = time.monotonic()
        self.beat()

    def leave(self) -> None:
        self.busy -= 1
        self.beat()


class Runtime:
    """The config, the source, the state, the mapping and the senders, for many passes.

    :param state: a state store (default: the SQL one at ``[state] url``).
    :param source: a source (default: the one at ``[source] url``).
    :param transport: the HTTP transport (tests: the sandbox's ``mock_transport``).
    :param sleep: and ``clock``: time, for the pacers and retries (tests switch them).
    :param observer: what delivery reports to (the daemon's metrics).
    :param fingerprint: the fingerprint key (default: read from ``[state] key_file``).
    """

    def __init__(self, config: Config, *, state: StateStore | None = None,
                 source: Source | None = None,
                 transport: httpx.AsyncBaseTransport | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 observer: Observer | None = None,
                 instance: str | None = None,
                 fingerprint: bytes | None = None) -> None:
        self.config = config
        self.state: StateStore = state or SqlStateStore.from_url(config.state.url)
        try:
            key = fingerprint_key.load(config, self.state) if fingerprint is None else fingerprint
        except BaseException:
            self.state.close()
            raise
        self.mapping = Mapping.for_config(config, key)
        self.senders = build_senders(config)
        self.destinations = frozenset(s.endpoint.destination for s in self.senders)
        self.row_hash_seed = self.mapping.row_hash_seed(self.destinations)
        self.source = source or Source(config.source, config.capture, self.mapping.columns,
                                       self.row_hash_seed, owners=config.column_owners())
        self.transport = transport
        self.sleep = sleep
        self.clock = clock
        self.observer: Observer = observer or NullObserver()
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.policy = RetryPolicy(config.delivery.max_attempts,
                                  config.delivery.backoff_initial_seconds,
                                  config.delivery.backoff_max_seconds,
                                  config.delivery.retry_after_max_seconds)
        self.heartbeat = Heartbeat()
        self.pacers: dict[Endpoint, Pacer] = {}  # outlive passes: back-to-back passes stay paced
        self.source_seconds = 0.0  # time spent on source work (queries, fetches, hashing)
        self._source_pool = ThreadPoolExecutor(1, thread_name_prefix="syncer-source")
        self._state_pool = ThreadPoolExecutor(1, thread_name_prefix="syncer-state")
        self._known: tuple[int, float] | None = None
        self._captures: dict[bool, tuple[Capture, float]] = {}

    def beat(self) -> None:
        """Work is progressing (the watchdog pings only while it does)."""
        self.heartbeat.beat()

    # -- the source and the state, each on its own thread

    async def in_source(self, fn: Callable[..., T], *args: Any) -> T:
        """Run source work on the source thread; its time is counted in ``source_seconds``."""

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn(*args)
            finally:
                self.source_seconds += time.perf_counter() - started

        return await self._busy(self._source_pool, timed)

    async def in_state(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._busy(self._state_pool, lambda: fn(*args))

    async def _busy(self, pool: ThreadPoolExecutor, fn: Callable[[], T]) -> T:
        self.heartbeat.enter()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        finally:
            self.heartbeat.leave()

    async def known_users(self, fresh: bool = False) -> int:
        """How many users the state knows alive, for the safety valve (reused for a few
        minutes, unless ``fresh``)."""
        now = time.monotonic()
        if fresh or self._known is None or now - self._known[1] > KNOWN_USERS_TTL:
            self._known = (await self.in_state(self.state.ledger.known_users), now)
        return self._known[0]

    def forget_known_users(self, changed: int | None = None) -> None:
        """The count may be off: recount at the next pass. With ``changed`` (users a pass
        settled), only when they could move it by more than 1% (a count is a scan of the
        state: a million rows every few hundred milliseconds under a steady trickle would cost
        more than the trickle itself); the TTL recounts anyway."""
        if changed is None or self._known is None or changed * 100 > self._known[0]:
            self._known = None

    # -- the capture

    @property
    def ctx(self) -> CaptureContext:
        return CaptureContext(self.source, self.state, self.mapping)

    def capture(self, reconcile: bool) -> Capture:
        """The capture of a pass. The same one serves the passes of a few minutes (it keeps
        what it learnt of the source: the outbox's names and columns), then a fresh one looks
        again (an outbox upgraded meanwhile by `syncer outbox install`)."""
        now = time.monotonic()
        kept = self._captures.get(reconcile)
        if kept is None or now - kept[1] > CAPTURE_TTL:
            kept = self._captures[reconcile] = (self._new_capture(reconcile), now)
        return kept[0]

    def _new_capture(self, reconcile: bool) -> Capture:
        mode = self.config.capture.mode
        if reconcile or mode == "snapshot":
            return SnapshotCapture()
        notes = blind_spots(self.config)
        if mode == "watermark" and self.config.source.watermarks:
            return TablesWatermarkCapture(self.config.capture, self.config.source, notes)
        if mode == "watermark":
            return WatermarkCapture(self.config.capture, notes)
        return OutboxCapture(self.config.capture, self.config.source, notes)

    def check(self) -> None:
        """Fail fast on a source that cannot serve this config (missing table or columns, or
        an outbox that was never installed)."""
        self.source.check()
        capture = self.capture(reconcile=False)
        if isinstance(capture, OutboxCapture):
            capture.check(self.ctx)

    # -- the destinations

    def timeouts(self) -> dict[Endpoint, float]:
        out: dict[Endpoint, float] = {}
        if self.config.blux:
            out[Endpoint.BLUX_UPDATE] = out[Endpoint.BLUX_DELETE] = self.config.blux.timeout_seconds
        if self.config.nachocode:
            out[Endpoint.NACHOCODE_WITHDRAW] = self.config.nachocode.timeout_seconds
        return out

    def http_client(self) -> httpx.AsyncClient:
        flights = sum(s.max_in_flight for s in self.senders) + 4
        return httpx.AsyncClient(
            transport=self.transport,
            limits=httpx.Limits(max_connections=flights, max_keepalive_connections=flights),
            headers={"User-Agent": f"syncer/{__version__}"},
            follow_redirects=False,
        )

    def close(self) -> None:
        self._source_pool.shutdown(wait=False, cancel_futures=True)
        self._state_pool.shutdown(wait=False, cancel_futures=True)
        self.source.close()
        self.state.close()
