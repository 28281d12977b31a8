"""Delivery: batches per endpoint, under the endpoint's rate limit, with enough requests in flight
to use the whole limit when the API is slow.

* Urgent operations (deletions, withdrawals, consent withdrawals) go before normal ones.
* 5xx, timeouts and dropped connections are retried with capped exponential backoff and jitter;
  429 pauses the endpoint for ``Retry-After``. What still fails stays *pending*: never recorded as
  delivered, tried again next pass.
* A 400 on a batch is narrowed down by splitting the batch until the users that cause it are
  found; those are quarantined with the server's reason, the rest land.
* Refused credentials stop that destination at once (the others go on); nachocode's "not enabled"
  holds withdrawals back.

Every operation ends in exactly one :class:`Outcome`, handed to ``on_outcome``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
import structlog

from syncer.destinations import Sender, send
from syncer.errors import (
    CredentialsRejected,
    DeliveryError,
    EndpointRefused,
    HeldBack,
    RateLimited,
    RejectedError,
    RetriableError,
    UserUnknown,
)
from syncer.lanes import Batch, Lane
from syncer.model import Endpoint, Op, Outcome, Status
from syncer.ratelimit import AsyncRateLimiter, Pacer, Send
from syncer.results import BulkProgress
from syncer.retry import RetryPolicy

log = structlog.get_logger("syncer.deliver")

# Single users refused one after another with nothing accepted in between: the endpoint refuses
# everything (a wrong method or body), not these users; stop quarantining them.
REJECTIONS_BEFORE_BLOCKING = 10
# Tries of each part of a batch narrowed down for 5xx/timeouts (see lanes.NARROWING_BUDGET).
NARROWING_ATTEMPTS = 2
STOPPING = "not sent: the pass is stopping"
CANCELLED = "not sent: the pass was cancelled"


class Observer(Protocol):
    """What delivery reports as it goes (metrics implement this)."""

    def request(self, endpoint: Endpoint, status: str, seconds: float, size: int) -> None: ...

    def retry(self, endpoint: Endpoint, reason: str) -> None: ...

    def throttled(self, endpoint: Endpoint, seconds: float) -> None: ...

    def bulk(self, progress: BulkProgress | None) -> None:
        """Bulk work under way (None: none)."""

    def live(self, users: int) -> None:
        """Users sent ahead of bulk work by the live lane."""


class NullObserver:
    def request(self, endpoint: Endpoint, status: str, seconds: float, size: int) -> None:
        pass

    def retry(self, endpoint: Endpoint, reason: str) -> None:
        pass

    def throttled(self, endpoint: Endpoint, seconds: float) -> None:
        pass

    def bulk(self, progress: BulkProgress | None) -> None:
        pass

    def live(self, users: int) -> None:
        pass


# How unlikely a user's own failures must be, were the API failing at random at the rate the
# other requests saw, before that user is taken for the cause.
BY_CHANCE = 0.01


def the_cause(accepted: int, failed: int, tries: int) -> bool:
    """Whether ``tries`` failures in a row of one user's request are beyond chance, when the
    endpoint accepted ``accepted`` other requests and failed ``failed`` others meanwhile (a
    flaky API fails anybody now and then). The failure rate is estimated with one success and
    one failure added, so that a handful of requests is weak evidence. Pure."""
    rate = (failed + 1) / (failed + accepted + 2)
    return accepted > 0 and rate ** tries < BY_CHANCE


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """What a pass's delivery came to, beside the outcome of each operation."""

    requests: dict[Endpoint, int]        # requests sent, per endpoint
    credentials: dict[str, str]          # destination -> why it refused the keys
    held: dict[Endpoint, str]            # endpoint -> why it held operations back
    pending: dict[Endpoint, str]         # endpoint -> the last reason an operation was left
    throttled: dict[Endpoint, float]     # seconds spent waiting for the rate limit


class Deliverer:
    """Runs the workers of every endpoint for one pass (use as an async context manager).

    :param feeding: operations will keep coming until :meth:`feeding_done`: a batch with no
        urgent operation leaves only full until then, so a pass makes no needless calls.
    """

    def __init__(self, senders: Sequence[Sender], client: httpx.AsyncClient, policy: RetryPolicy,
                 on_outcome: Callable[[Outcome], None], *,
                 timeouts: dict[Endpoint, float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 rng: random.Random | None = None,
                 observer: Observer | None = None,
                 pacers: dict[Endpoint, Pacer] | None = None,
                 feeding: bool = False) -> None:
        self.client = client
        self.policy = policy
        self.on_outcome = on_outcome
        self.timeouts = timeouts or {}
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._rng = rng or random.Random()
        self.observer: Observer = observer or NullObserver()
        self._lanes: dict[Endpoint, Lane] = {}
        pacers = pacers if pacers is not None else {}
        for sender in senders:
            pacer = pacers.setdefault(sender.endpoint, Pacer.for_rate(sender.rate))
            limiter = AsyncRateLimiter(pacer, clock, sleep)
            self._lanes[sender.endpoint] = Lane(sender, limiter,
                                               asyncio.Semaphore(sender.max_in_flight))
        self._credentials: dict[str, str] = {}  # destination -> why its keys were refused
        self._held: dict[Endpoint, str] = {}
        self._pending: dict[Endpoint, str] = {}  # the last reason an operation waits
        self._outstanding = 0
        self._open: dict[int, Op] = {}  # submitted operations without an outcome yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self._closing = False
        self._accepting = True
        self._feeding = feeding
        self._workers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiting: set[asyncio.Task[None]] = set()
        self._pacing: set[asyncio.Task[object]] = set()   # sends waiting for their slot

    # -- lifecycle

    async def __aenter__(self) -> Deliverer:
        self._workers = [asyncio.create_task(self._worker(lane), name=f"deliver:{ep}")
                         for ep, lane in self._lanes.items()]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing = True
        self._feeding = False
        for lane in self._lanes.values():
            lane.wake.set()
        if exc[0] is not None:
            for task in [*self._workers, *self._tasks, *self._waiting]:
                task.cancel()
        await asyncio.gather(*self._workers, *self._tasks, *self._waiting,
                             return_exceptions=True)

    # -- feeding

    def submit(self, ops: Iterable[Op]) -> None:
        """Queue operations; each ends in one outcome. Operations for an endpoint without a
        sender, or after :meth:`stop_accepting`, are pending at once."""
        for op in ops:
            lane = self._lanes.get(op.endpoint)
            if id(op) in self._open:
                continue  # the same operation twice: it gets one outcome
            self._open[id(op)] = op
            self._outstanding += 1
            self._idle.clear()
            if lane is None or not self._accepting:
                self._resolve([op], Status.PENDING, STOPPING
                              if lane is not None else f"{op.endpoint} is not configured")
                continue
            if lane.blocked is not None:
                self._resolve([op], Status.PENDING, lane.blocked)
                continue
            lane.push(op)

    def cancel(self, ops: Sequence[Op]) -> bool:
        """Take back operations that are still waiting in their queues (none in a request, none
        with an outcome), all of them or none: True when they were taken back, and then they
        get no outcome. Used when a newer reading of the same user supersedes them."""
        by_lane: dict[Endpoint, list[Op]] = {}
        for op in ops:
            if id(op) not in self._open or op.endpoint not in self._lanes:
                return False
            by_lane.setdefault(op.endpoint, []).append(op)
        lanes = [(self._lanes[ep], part) for ep, part in by_lane.items()]
        if not all(lane.holds(part) for lane, part in lanes):
            return False
        for lane, part in lanes:
            lane.withdraw(part)
        for op in ops:
            del self._open[id(op)]
            self._outstanding -= 1
        self._progress.set()
        if self._outstanding <= 0:
            self._outstanding = 0
            self._idle.set()
        return True

    def report(self) -> DeliveryReport:
        return DeliveryReport({ep: lane.requests for ep, lane in self._lanes.items()
                               if lane.requests},
                              dict(self._credentials), dict(self._held),
                              dict(self._pending),
                              {ep: lane.limiter.waited for ep, lane in self._lanes.items()})

    async def wait_below(self, limit: int) -> None:
        """Backpressure: return once fewer than ``limit`` operations are waiting or in flight."""
        while self._outstanding >= limit:
            self._progress.clear()
            await self._progress.wait()

    async def drain(self) -> None:
        """Wait until every submitted operation has an outcome."""
        await self._idle.wait()

    def stop_accepting(self, reason: str = STOPPING) -> None:
        """Graceful stop: what is queued, waiting for a slot or for a retry becomes pending;
        requests in flight finish (or time out) and are recorded as usual."""
        if not self._accepting:
            return
        self._accepting = False
        for lane in self._lanes.values():
            self._drop_queue(lane, reason)
        for task in [*self._workers, *self._waiting, *self._pacing]:
            task.cancel()

    # -- internals

    def _resolve(self, ops: Sequence[Op], status: Status, reason: str = "",
                 transient: bool = False, sent_at: float | None = None,
                 answer: int | None = None) -> None:
        """Give each operation its one outcome; an operation that already has one is skipped,
        and a failing callback is logged, so the count of open operations stays exact.
        ``sent_at``: when the request that settled them left (the audit trail's times)."""
        if status is Status.PENDING and ops and reason:
            self._pending[ops[0].endpoint] = reason
        acked_at = self._wall() if sent_at is not None else None
        for op in ops:
            if self._open.pop(id(op), None) is None:
                continue
            self._outstanding -= 1
            try:
                self.on_outcome(Outcome(op, status, reason, transient, sent_at, acked_at,
                                        answer))
            except Exception:
                log.exception("delivery.outcome_failed", endpoint=str(op.endpoint),
                              user_id=op.user_id)
        self._progress.set()
        if self._outstanding <= 0:
            self._outstanding = 0
            self._idle.set()

    def _drop_queue(self, lane: Lane, reason: str) -> None:
        ops = lane.drop()
        if ops:
            self._resolve(ops, Status.PENDING, reason)

    def _block(self, lanes: Iterable[Lane], reason: str) -> None:
        for lane in lanes:
            if lane.blocked is None:
                lane.blocked = reason
            self._drop_queue(lane, reason)

    def feeding_done(self) -> None:
        """No more operations will be submitted: partial batches may leave now."""
        self._feeding = False
        for lane in self._lanes.values():
            lane.wake.set()

    async def _worker(self, lane: Lane) -> None:
        """One endpoint's sends: a free place in flight, then the next send slot, and only
        then the batch, so that what is most urgent at the moment the request leaves is in
        it (an operation that arrives while sends wait for their slots does not queue behind
        batches already made)."""
        while True:
            if not lane.can_take(self._feeding):
                if self._closing or not self._accepting:
                    return
                lane.wake.clear()
                await lane.wake.wait()
                continue
            if lane.blocked is not None:
                self._drop_queue(lane, lane.blocked)
                continue
            await lane.slots.acquire()
            try:
                slot = await self._pace(lane)
                batch = lane.take(self._feeding) if slot is not None else None
            except BaseException:
                lane.slots.release()
                raise
            if batch is None:   # stopped or blocked meanwhile, or taken back
                lane.slots.release()
                continue
            assert slot is not None
            task = asyncio.create_task(self._send(lane, batch, slot))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pace(self, lane: Lane) -> Send | None:
        """Wait for the endpoint's next send slot; None when the pass stopped or the endpoint
        was blocked meanwhile. The sender reports on the slot when the request was really
        written (see :mod:`syncer.ratelimit`)."""
        task = asyncio.current_task()
        assert task is not None
        self._pacing.add(task)
        try:
            before = self._clock()
            slot = await lane.limiter.acquire()
            waited = self._clock() - before
            if waited > 0.001:
                self.observer.throttled(lane.endpoint, waited)
        finally:
            self._pacing.discard(task)
        return slot if lane.blocked is None and self._accepting else None

    async def _send(self, lane: Lane, batch: Batch, slot: Send) -> None:
        endpoint = lane.endpoint
        try:
            request = lane.sender.build(batch.ops)
            started = self._clock()
            batch.sent_at = self._wall()
            lane.requests += 1
            error: DeliveryError | None
            try:
                answer = await send(self.client, request, self.timeouts.get(endpoint, 10.0),
                                    written=lambda: slot.wrote(self._clock()))
                error = lane.sender.classify(answer, self._wall())
                status = str(answer.status)
            except RetriableError as exc:
                error, status = exc, "error"
            self.observer.request(endpoint, status, self._clock() - started, len(batch.ops))
            log.debug("delivery.request", endpoint=str(endpoint), status=status,
                      size=len(batch.ops), attempt=batch.attempts + 1)
            if error is None:
                lane.rejected_in_a_row = 0
                lane.successes += 1
                self._resolve(batch.ops, Status.DELIVERED, sent_at=batch.sent_at,
                              answer=answer.status)
            else:
                self._failed(lane, batch, error)
        except asyncio.CancelledError:
            self._resolve(batch.ops, Status.PENDING, CANCELLED)
            raise
        except Exception as exc:  # a bug must not lose operations: they stay pending
            log.exception("delivery.unexpected_error", endpoint=str(endpoint))
            self._resolve(batch.ops, Status.PENDING, f"unexpected error: {type(exc).__name__}")
        finally:
            lane.slots.release()

    def _failed(self, lane: Lane, batch: Batch, error: DeliveryError) -> None:
        """What a failed request means for its batch: by what the caller should do."""
        match self._escalate(lane, batch, error):
            case CredentialsRejected() as refused:
                self._refused_keys(lane, batch, refused)
            case HeldBack() as held:
                self._held_back(lane, batch, held)
            case RejectedError() as rejected:
                self._rejected(lane, batch, rejected)
            case RateLimited() as limited:
                self._throttled(lane, batch, limited)
            case other:
                self._retry_or_narrow(lane, batch, other)

    def _escalate(self, lane: Lane, batch: Batch, error: DeliveryError) -> DeliveryError:
        """Single users refused one after another, with nothing accepted in between: the
        endpoint refuses everything (a wrong method or body), not these users."""
        if isinstance(error, RejectedError) and not isinstance(error, UserUnknown):
            lane.rejected_in_a_row = lane.rejected_in_a_row + 1 if len(batch.ops) == 1 else 0
            if lane.rejected_in_a_row >= REJECTIONS_BEFORE_BLOCKING:
                return EndpointRefused(
                    f"{lane.endpoint} refused {lane.rejected_in_a_row} users in a row, each on "
                    f"its own ({error}); stopped sending there: check the configuration")
        return error

    def _refused_keys(self, lane: Lane, batch: Batch, error: CredentialsRejected) -> None:
        """Stop the whole destination: every endpoint of it, whatever is queued."""
        dest = lane.endpoint.destination
        if dest not in self._credentials:
            log.error("delivery.credentials_rejected", destination=dest, reason=str(error))
        self._credentials.setdefault(dest, str(error))
        self._resolve(batch.ops, Status.PENDING, str(error))
        self._block([ln for ep, ln in self._lanes.items() if ep.destination == dest],
                    str(error))

    def _held_back(self, lane: Lane, batch: Batch, error: HeldBack) -> None:
        """This endpoint cannot take such requests now: keep everything for it pending."""
        if lane.endpoint not in self._held:
            log.warning("delivery.held_back", endpoint=str(lane.endpoint), reason=str(error))
        self._held.setdefault(lane.endpoint, str(error))
        self._resolve(batch.ops, Status.PENDING, str(error))
        self._block([lane], str(error))

    def _rejected(self, lane: Lane, batch: Batch, error: RejectedError) -> None:
        """A 400 on the content: split until the users that cause it are found alone."""
        if len(batch.ops) == 1:
            log.warning("delivery.quarantined", endpoint=str(lane.endpoint),
                        user_id=batch.ops[0].user_id, reason=str(error))
            self._resolve(batch.ops, Status.QUARANTINED, str(error), sent_at=batch.sent_at)
            return
        half = len(batch.ops) // 2
        self.observer.retry(lane.endpoint, "split")
        for part in (batch.ops[:half], batch.ops[half:]):
            self._ready(lane, Batch(list(part), batch.priority))

    def _throttled(self, lane: Lane, batch: Batch, error: RateLimited) -> None:
        """429 (or a Retry-After): the whole endpoint waits, then the batch goes again."""
        batch.throttled += 1
        wait = self.policy.wait_for(error.retry_after, batch.throttled, self._rng)
        lane.limiter.pause_until(self._clock() + wait)
        self.observer.retry(lane.endpoint, "429" if "429" in str(error) else "retry-after")
        if batch.throttled > self.policy.max_attempts * 3:
            self._resolve(batch.ops, Status.PENDING, str(error))
        else:
            log.info("delivery.throttled", endpoint=str(lane.endpoint), wait=round(wait, 3))
            self._ready(lane, batch)

    def _retry_or_narrow(self, lane: Lane, batch: Batch, error: DeliveryError) -> None:
        """5xx, a timeout, a dropped connection: back off and try again. While the endpoint
        accepts other requests, a batch that keeps failing is narrowed down (split in halves,
        fewer tries each) to the user the API cannot take, which is quarantined (transient:
        reconcile passes try it again), and the rest lands. Without such evidence one failing
        batch per endpoint and pass is split once, to find out; beyond that (the API is down)
        everything stays pending."""
        endpoint = lane.endpoint
        batch.attempts += 1
        batch.own_failures += 1
        lane.failures += 1
        if batch.failing_since is None:
            batch.failing_since = (lane.successes, lane.failures - 1)
        self.observer.retry(endpoint, "error")
        parts = batch.narrowing and len(batch.ops) > 1
        limit = NARROWING_ATTEMPTS if parts else self.policy.max_attempts
        if batch.attempts < limit:
            if not self._accepting:
                self._resolve(batch.ops, Status.PENDING, str(error))
                return
            delay = self.policy.backoff(batch.attempts, self._rng)
            log.info("delivery.retry", endpoint=str(endpoint), size=len(batch.ops),
                     attempt=batch.attempts, delay=round(delay, 3), reason=str(error))
            task = asyncio.create_task(self._later(lane, batch, delay))
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)
            return
        then_ok, then_failed = batch.failing_since
        accepted = lane.successes - then_ok
        failed = lane.failures - then_failed - batch.own_failures   # other requests' failures
        accepted_others = accepted > 0
        explore = not accepted_others and not batch.narrowing and not lane.explored
        if len(batch.ops) > 1 and lane.narrowing_budget >= 2 and (accepted_others or explore):
            lane.narrowing_budget -= 2
            lane.explored = lane.explored or explore
            half = len(batch.ops) // 2
            self.observer.retry(endpoint, "split")
            log.info("delivery.narrowing", endpoint=str(endpoint), size=len(batch.ops),
                     reason=str(error))
            for part in (batch.ops[:half], batch.ops[half:]):
                self._ready(lane, Batch(list(part), batch.priority, narrowing=True,
                                        failing_since=batch.failing_since,
                                        own_failures=batch.own_failures))
            return
        if len(batch.ops) == 1 and batch.narrowing and the_cause(accepted, failed,
                                                                 batch.attempts):
            why = (f"{error} at every try ({batch.attempts}), while the other users of its "
                   "batch were accepted; tried again in an hour (`syncer retry` sends it "
                   "now)")
            log.warning("delivery.quarantined", endpoint=str(endpoint),
                        user_id=batch.ops[0].user_id, reason=why)
            self._resolve(batch.ops, Status.QUARANTINED, why, transient=True,
                          sent_at=batch.sent_at)
            return
        log.warning("delivery.gave_up", endpoint=str(endpoint), size=len(batch.ops),
                    attempts=batch.attempts, reason=str(error))
        self._resolve(batch.ops, Status.PENDING, str(error))

    def _ready(self, lane: Lane, batch: Batch) -> None:
        if lane.blocked is not None or not self._accepting:
            self._resolve(batch.ops, Status.PENDING,
                          lane.blocked or STOPPING)
            return
        lane.requeue(batch)

    async def _later(self, lane: Lane, batch: Batch, delay: float) -> None:
        try:
            await self._sleep(delay)
        except asyncio.CancelledError:
            self._resolve(batch.ops, Status.PENDING, CANCELLED)
            raise
        self._ready(lane, batch)
