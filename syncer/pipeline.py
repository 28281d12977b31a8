"""One pass: capture → read rows → map and normalise → diff against the state → deliver → record.

This is the only module that wires the others together; the CLI and the daemon only call
:func:`run_pass` (or :func:`plan_pass`) with a :class:`Runtime`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Final, TypeVar

import httpx
import structlog

from syncer import __version__, diff, fingerprint_key, normalize
from syncer.capture import (
    Candidates,
    Capture,
    CaptureContext,
    CaptureStopped,
    TooManyDeletions,
)
from syncer.capture.outbox import OutboxCapture
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark import WatermarkCapture
from syncer.clock import utcnow
from syncer.config import Config
from syncer.deliver import Deliverer, NullObserver, Observer
from syncer.destinations import Sender
from syncer.destinations.blux import BluxDelete, BluxUpdate
from syncer.destinations.nachocode import NachocodeWithdraw
from syncer.errors import ConfigError, SafetyValveTripped, SyncerError
from syncer.mapping import CONSENTS, Mapping
from syncer.model import (
    Endpoint,
    KeyKind,
    Op,
    Outcome,
    Status,
    UserRecord,
    UserState,
    UserWrite,
)
from syncer.normalize import Invalid
from syncer.ratelimit import Pacer
from syncer.retry import RetryPolicy
from syncer.source import Source
from syncer.state import StateStore
from syncer.state.sql import SqlStateStore

log = structlog.get_logger("syncer.pipeline")

T = TypeVar("T")
Progress = Callable[[str, int, int | None], None]

_SAMPLE: Final = 20
PRUNE_BATCH: Final = 500   # old passes deleted after each pass, at most



def build_senders(config: Config) -> list[Sender]:
    senders: list[Sender] = []
    if config.blux:
        senders += [BluxUpdate(config.blux), BluxDelete(config.blux)]
    if config.nachocode:
        senders.append(NachocodeWithdraw(config.nachocode))
    return senders


class Runtime:
    """What passes share for the life of a process: the config, the source, the state, the mapping,
    the captures. Open once, run many passes, close."""

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
        self._source_pool = ThreadPoolExecutor(1, thread_name_prefix="syncer-source")
        self._state_pool = ThreadPoolExecutor(1, thread_name_prefix="syncer-state")
        self.last_credentials: dict[str, str] = {}
        self.pacers: dict[Endpoint, Pacer] = {}  # outlive passes: back-to-back passes stay paced
        self.last_beat = time.monotonic()
        self.busy = 0  # database calls in progress
        self.busy_since = 0.0  # when the oldest of them started
        self._known: tuple[int, float] | None = None
        self.source_seconds = 0.0  # time spent on source work (queries, fetches, hashing)

    async def known_users(self, fresh: bool = False) -> int:
        """How many users the state knows alive, for the safety valve. Counting a large state
        takes a while, so the count is reused for a few minutes: it moves slowly, and the valve
        only needs its size."""
        now = time.monotonic()
        if fresh or self._known is None or now - self._known[1] > 300:
            self._known = (await self.in_state(self.state.known_users), now)
        return self._known[0]

    def forget_known_users(self) -> None:
        self._known = None

    def beat(self) -> None:
        """Work is progressing (the watchdog pings only while it does)."""
        self.last_beat = time.monotonic()

    @property
    def ctx(self) -> CaptureContext:
        return CaptureContext(self.source, self.state, self.mapping)

    def capture(self, reconcile: bool) -> Capture:
        mode = self.config.capture.mode
        if reconcile or mode == "snapshot":
            return SnapshotCapture()
        if mode == "watermark":
            return WatermarkCapture(self.config.capture)
        return OutboxCapture(self.config.capture, self.config.source)

    def check(self) -> None:
        """Fail fast on a source that cannot serve this config (missing table or columns, or
        an outbox that was never installed)."""
        self.source.check()
        capture = self.capture(reconcile=False)
        if isinstance(capture, OutboxCapture):
            capture.check(self.ctx)

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
        """Database work in its thread. While it runs, only the work itself proves progress
        (a hung query must stop the watchdog); the pass's ticker beats only between calls."""
        self.busy += 1
        if self.busy == 1:
            self.busy_since = time.monotonic()
        self.beat()
        try:
            return await asyncio.get_running_loop().run_in_executor(pool, fn)
        finally:
            self.busy -= 1
            self.beat()

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


# ----------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class Sample:
    user_id: str
    endpoint: str
    reason: str
    fields: dict[str, object]  # field -> new value (plan output only; never logged)


@dataclass(slots=True)
class Plan:
    ops: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    calls: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    known_users: int = 0
    known_deletions: int = 0
    valve_limit: float = 0.0
    position: dict[str, object] = field(default_factory=dict)

    @property
    def estimated_seconds(self) -> float:
        return max(self.seconds.values(), default=0.0)

    @property
    def valve_trips(self) -> bool:
        return self.known_deletions > self.valve_limit


@dataclass(frozen=True, slots=True)
class PassResult:
    pass_id: int | None
    kind: str
    mode: str
    outcome: str  # ok | partial | valve | credentials | stopped | failed | dry-run
    counts: dict[str, int]
    credentials: dict[str, str] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)
    message: str | None = None
    seconds: float = 0.0
    plan: Plan | None = None
    more: bool = False  # the capture left work: run the next pass right away
    position: dict[str, object] = field(default_factory=dict)  # where the capture stands

    @property
    def exit_code(self) -> int:
        if self.outcome == "credentials":
            return 3
        if self.outcome in ("ok", "dry-run"):
            return 0
        return 1


# ----------------------------------------------------------------------------- the pass


@dataclass(slots=True)
class _Work:
    record: UserRecord
    state: UserState | None
    key_int: int | None
    source_key: str | None
    ops: list[Op]
    outcomes: list[Outcome] = field(default_factory=list)
    write: UserWrite | None = None   # what to record when there is nothing to send

    def settled(self) -> UserWrite:
        return self.write or diff.settle(self.record, self.state, self.outcomes, self.key_int,
                                         self.source_key)

    @property
    def deletes(self) -> bool:
        """Whether this user's operations delete or withdraw anything."""
        return any(op.endpoint is not Endpoint.BLUX_UPDATE for op in self.ops)


class _Pass:
    def __init__(self, rt: Runtime, *, reconcile: bool, confirm: bool, dry_run: bool,
                 stop: threading.Event | None, progress: Progress | None,
                 time_limit: float | None = None) -> None:
        self.rt = rt
        self.time_limit = time_limit
        self.timed_out = False
        self.initial = False
        self.skip_history = False
        self.send_unseen = False
        self.recreated: set[object] = set()   # keys the capture saw deleted and re-created
        self.new_deletions = 0               # deletions admitted through the safety valve
        self.valve_limit = math.inf
        self.seen_keys: set[object] = set()   # source keys examined in this pass
        self.seen_uids: set[str] = set()      # and their user ids (for keys that are not ints)
        self.reconcile = reconcile
        self.confirm = confirm
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.progress = progress
        self.counts: Counter[str] = Counter()
        self.writes: list[UserWrite] = []
        self._recorded = asyncio.Event()   # outcomes are waiting to be written
        self._recording = True
        self.tracking: dict[str, _Work] = {}
        self.plan = Plan()
        self.deliverer: Deliverer | None = None
        self.capture = rt.capture(reconcile)
        self.kind = "reconcile" if isinstance(self.capture, SnapshotCapture) else "incremental"
        if self.kind == "incremental" and self.capture.starts_with_snapshot(rt.ctx):
            self.kind = "reconcile"   # the first pass of an incremental mode
        self.more = False
        self.key_kind: KeyKind = KeyKind.TEXT
        self.settled = 0   # candidates done with for this pass (nothing left pending)

    # -- results of deliveries

    def on_outcome(self, outcome: Outcome) -> None:
        op = outcome.op
        self.rt.beat()
        work = self.tracking.get(op.user_id)
        if work is None:  # cannot happen: every user is examined once per pass
            log.error("pass.untracked_outcome", user_id=op.user_id, endpoint=str(op.endpoint))
            return
        work.outcomes.append(outcome)
        if outcome.status is Status.DELIVERED:
            self.counts[{Endpoint.BLUX_UPDATE: "updated", Endpoint.BLUX_DELETE: "deleted",
                         Endpoint.NACHOCODE_WITHDRAW: "withdrawn"}[op.endpoint]] += 1
        elif outcome.status is Status.QUARANTINED:
            self.counts["quarantined"] += 1
            self.counts[f"quarantined:{op.endpoint}"] += 1
        else:
            self.counts["pending"] += 1
            self.counts[f"pending:{op.endpoint}"] += 1
        if len(work.outcomes) == len(work.ops):
            del self.tracking[op.user_id]
            if all(o.status is not Status.PENDING for o in work.outcomes):
                self.settled += 1
            self.writes.append(work.settled())
            self._recorded.set()

    # -- reading and diffing (worker thread)

    def examine(self, keys: Sequence[object]) -> list[_Work]:
        """Read these users' rows, map them, and diff them against the state. Each user is
        examined once per pass, however many times a capture names it."""
        rt = self.rt
        rt.beat()
        records: dict[str, UserRecord] = {}
        twice: set[str] = set()
        for raw in rt.source.read(keys):
            try:
                record = rt.mapping.record(raw)
            except Invalid as exc:
                self._invalid_key(raw.key, str(exc))
                continue
            if record.user_id in records or record.user_id in twice:
                twice.add(record.user_id)
                continue
            records[record.user_id] = record
        for dup in twice:  # which row is the user? neither is sent until the source says
            del records[dup]
            self._invalid_key(dup, "two rows of the source give this user id (duplicate key, "
                                   "or keys that differ only by surrounding spaces)")
        for key in keys:
            wanted = normalize.user_id_or_none(key)
            if wanted is not None and wanted not in records and wanted not in twice:
                records[wanted] = UserRecord(wanted, key, None, deleted=True)
        for uid, record in list(records.items()):
            if record.source_key in self.seen_keys:      # the same key named twice: once
                del records[uid]
            elif self.key_kind is not KeyKind.INT and uid in self.seen_uids:
                if not record.deleted:
                    self._invalid_key(record.source_key,
                                      "another row already gave this user id in this pass (keys "
                                      "that differ only by surrounding spaces?); only that one "
                                      "was sent")
                del records[uid]
        self.seen_keys.update(r.source_key for r in records.values())
        if self.key_kind is not KeyKind.INT:   # distinct integers cannot share a user id
            self.seen_uids.update(records)
        states = rt.state.lookup(list(records))
        return [self._diff(record, states.get(uid)) for uid, record in records.items()]

    def _diff(self, record: UserRecord, state: UserState | None) -> _Work:
        """What to send for one user (and what to record when nothing is)."""
        rt = self.rt
        uid = record.user_id
        key = record.source_key
        key_int = key if (self.key_kind is KeyKind.INT and type(key) is int
                          and -(2**63) <= key < 2**63) else None
        text = key if isinstance(key, str) and key != uid else None
        if not record.deleted and (key in self.recreated or diff.identity_changed(record, state)):
            record = replace(record, recreated=True)
        work = _Work(record, state, key_int, text, [])
        if record.unreadable is not None:
            # Neither alive nor deleted as far as syncer can tell: nothing is sent for it.
            self.counts["unreadable_rows"] += 1
            log.warning("source.unreadable_row", user_id=uid, reason=record.unreadable)
            work.write = diff.unreadable(record, state, rt.destinations, key_int, text)
            return work
        if self.skip_history and record.deleted and state is None:
            # Deleted before syncer ever ran: recorded as history, not sent.
            self.counts["deleted_before_first_pass"] += 1
            return work
        work.ops = diff.operations(record, state, rt.mapping, rt.destinations,
                                   retry_deletions=self.kind == "reconcile",
                                   send_unseen=self.send_unseen, now=utcnow())
        if not work.ops and diff.unseen_deletion(record, state) and not self.send_unseen:
            self.counts["deletions_not_sent"] += 1
            log.warning("diff.unseen_deletion", user_id=uid,
                        reason="deleted or gone in the source, but never seen alive: nothing "
                               "is deleted or withdrawn for it")
        if record.recreated and work.deletes:
            self.more = True   # the new person is sent by the next pass, right away
            self.counts["recreated"] += 1
            log.info("diff.recreated", user_id=uid,
                     hint="the previous person is deleted and withdrawn first; the new one is "
                          "sent whole at the next pass")
        self._note_cleared_consents(work.ops)
        if record.problems:
            self.counts["field_problems"] += len(record.problems)
            for problem in record.problems:
                self.counts[f"problem:{problem.field}"] += 1
                log.debug("mapping.field_problem", user_id=uid, field=problem.field,
                          reason=problem.reason)
        return work

    def admit(self, works: Sequence[_Work]) -> None:
        """The safety valve, on what would really be sent: every deletion or withdrawal of a
        user whose deletion has not already been through the valve (whatever the capture's
        cheaper count said). Raises before any of ``works`` is sent."""
        fresh = sum(1 for w in works if w.deletes and not diff.through_the_valve(w.state))
        self.new_deletions += fresh
        self.plan.known_deletions = max(self.plan.known_deletions, self.new_deletions)
        if fresh and self.new_deletions > self.valve_limit and not self.confirm \
                and not self.dry_run:
            raise SafetyValveTripped(self.new_deletions, self.plan.known_users,
                                     self.rt.config.capture.max_delete_fraction,
                                     sent=self.counts["deleted"] + self.counts["withdrawn"])

    async def _apply_requests(self) -> None:
        """What `syncer retry`/`resync` asked while this instance was sending."""
        rt = self.rt
        requests = await rt.in_state(rt.state.take_requests)
        for kind in ("retry", "resync"):
            ids = [uid for k, uid in requests if k == kind]
            if not ids:
                continue
            everyone = None in ids
            users = await rt.in_state(rt.state.requeue_quarantined if kind == "retry"
                                      else rt.state.forget,
                                      None if everyone else [u for u in ids if u is not None])
            log.info("pass.operator_request", kind=kind, users=users,
                     scope="all" if everyone else "some")

    def _note_cleared_consents(self, ops: list[Op]) -> None:
        """A consent that Blux had and the source no longer gives (NULL or unreadable) cannot be
        removed at Blux: say so, by user id (``[mapping] null_consents = "false"`` sends it as
        false instead)."""
        for op in ops:
            if op.payload is None or not op.changed_fields:
                continue
            sent = dict(op.payload.user_properties)
            for name in op.changed_fields:
                if name in CONSENTS and name not in sent:
                    self.counts["consents_cleared"] += 1
                    log.warning("mapping.consent_cleared", user_id=op.user_id, field=name,
                                hint="Blux keeps its last value; set the column to false to "
                                     "withdraw, or [mapping] null_consents = \"false\"")

    def _invalid_key(self, key: object, reason: str) -> None:
        self.counts["invalid_keys"] += 1
        log.warning("source.invalid_key", key=repr(key)[:64], reason=reason)

    # -- the flow

    def segments(self, found: Candidates, *, deletions: bool) -> Iterator[list[object]]:
        """The deletions (absent or soft-deleted keys), or the changes, in chunks of
        ``[source] chunk_size`` keys."""
        size = self.rt.config.source.chunk_size
        keys = (itertools.chain(found.absent, found.deleted) if deletions
                else iter(found.changed))
        while chunk := list(itertools.islice(keys, size)):
            yield chunk

    async def run(self) -> PassResult:
        rt = self.rt
        started = time.monotonic()
        pass_id = None
        if not self.dry_run:
            pass_id = await rt.in_state(rt.state.start_pass, self.kind, rt.config.capture.mode,
                                        utcnow(), rt.instance)
        log.info("pass.started", kind=self.kind, mode=rt.config.capture.mode, pass_id=pass_id)
        try:
            outcome, message = await self._run()
        except SafetyValveTripped as exc:
            outcome, message = "valve", str(exc)
            log.error("pass.safety_valve", deletions=exc.deletions, known=exc.known,
                      fraction=exc.fraction)
        except ConfigError as exc:
            if pass_id is not None:
                await rt.in_state(rt.state.finish_pass, pass_id, "failed", self._counts(),
                                  str(exc), utcnow(), self.kind)
            raise
        except SyncerError as exc:
            outcome, message = "failed", str(exc)
            log.error("pass.failed", error=str(exc))
        except BaseException as exc:
            if pass_id is not None:
                await asyncio.shield(rt.in_state(rt.state.finish_pass, pass_id, "failed",
                                                 self._counts(), type(exc).__name__, utcnow()))
            raise
        credentials = dict(self.deliverer.credentials) if self.deliverer else {}
        held = {str(k): v for k, v in self.deliverer.held.items()} if self.deliverer else {}
        rt.last_credentials = credentials
        counts = self._counts()
        if pass_id is not None:
            await rt.in_state(rt.state.finish_pass, pass_id, outcome, counts, message, utcnow(),
                              self.kind)
            await self._prune_passes()
        seconds = time.monotonic() - started
        level = {"ok": log.info, "dry-run": log.info, "partial": log.warning,
                 "stopped": log.warning}.get(outcome, log.error)
        level("pass.completed", kind=self.kind, mode=rt.config.capture.mode, outcome=outcome,
              seconds=round(seconds, 3), pass_id=pass_id,
              **{k: v for k, v in counts.items() if ":" not in k})
        return PassResult(pass_id, self.kind, rt.config.capture.mode, outcome, counts,
                          credentials, held, message, seconds, self.plan if self.dry_run else None,
                          self.more and outcome in ("ok", "partial"), dict(self.plan.position))

    async def _prune_passes(self) -> None:
        """Keep the pass history within ``[state] keep_passes``: a small batch after each pass
        (the history only grows by one a pass, so it never falls behind for long)."""
        try:
            await self.rt.in_state(self.rt.state.prune_passes,
                                   self.rt.config.state.keep_passes, PRUNE_BATCH)
        except SyncerError as exc:
            log.warning("state.prune_failed", error=str(exc))

    def _counts(self) -> dict[str, int]:
        counts = {k: v for k, v in self.counts.items() if v}
        if self.deliverer:
            for ep, lane in self.deliverer.lanes.items():
                if lane.requests:
                    counts[f"requests:{ep}"] = lane.requests
            for dest in self.deliverer.credentials:
                counts[f"credentials:{dest}"] = 1
            for ep in self.deliverer.held:
                counts[f"held:{ep}"] = 1
        return counts

    async def _run(self) -> tuple[str, str | None]:
        rt = self.rt
        if not self.dry_run:
            await self._apply_requests()
        self.key_kind = await rt.in_source(rt.source.key_kind)
        self.initial = not await rt.in_state(rt.state.has_users) and not any(
            p.outcome in ("ok", "partial") for p in await rt.in_state(rt.state.recent_passes, 50))
        known = await rt.known_users(fresh=self.dry_run)
        fraction = rt.config.capture.max_delete_fraction
        limit = max(float(rt.config.capture.max_delete_floor), fraction * known)
        self.skip_history = self.initial and rt.config.capture.initial_deletions == "skip"
        self.send_unseen = self.initial and rt.config.capture.initial_deletions == "send"
        self.valve_limit = limit
        ctx = replace(rt.ctx, count_unknown_deletions=self.send_unseen,
                      valve_limit=None if self.confirm or self.dry_run else limit, beat=rt.beat,
                      stopping=self.stop.is_set)
        self._progress("capture", 0, None)
        try:
            found: Candidates = await rt.in_source(self.capture.collect, ctx)
        except TooManyDeletions as exc:
            raise SafetyValveTripped(exc.deletions, known, fraction, at_least=True) from None
        except CaptureStopped:
            return "stopped", "stopped during the capture; nothing was sent"
        if found.reconcile:
            self.kind = "reconcile"
        if self.initial and found.reconcile:
            _refuse_a_soft_delete_that_deletes_everyone(rt.config, found)
        self.more = found.more
        self.counts["scanned"] = found.scanned
        self.counts["candidates"] = found.total
        for key, reason in found.invalid:
            self._invalid_key(key, reason)
        self.plan.known_users, self.plan.known_deletions = known, found.deletions
        self.recreated = set(found.recreated)
        self.plan.valve_limit, self.plan.position = limit, dict(found.position)
        if found.deletions > limit and not self.confirm and not self.dry_run:
            raise SafetyValveTripped(found.deletions, known, fraction)
        if self.dry_run:
            await self._plan(found)
            return "dry-run", None
        if found.purged:
            await rt.in_state(rt.state.forget_row_hashes, found.purged)
        try:
            async with rt.http_client() as client, Deliverer(
                rt.senders, client, rt.policy, self.on_outcome, timeouts=rt.timeouts(),
                clock=rt.clock, sleep=rt.sleep or asyncio.sleep, observer=rt.observer,
                pacers=rt.pacers,
            ) as deliverer:
                self.deliverer = deliverer
                watcher = asyncio.create_task(self._watch_stop())
                recorder = asyncio.create_task(self._record())
                try:
                    deliverer.feeding = True
                    try:
                        await self._feed(found)
                    finally:
                        deliverer.feeding_done()
                    await deliverer.drain()
                finally:
                    watcher.cancel()
                    self._recording = False   # never cancelled: a queued write must not be lost
                    self._recorded.set()
                    await asyncio.gather(recorder, return_exceptions=True)
        finally:
            await self._flush()  # what was delivered is recorded, even when the pass fails
            if found.total:
                rt.forget_known_users()
        stopped = self.stop.is_set() or self.timed_out
        if found.commit is not None and not stopped:
            await rt.in_source(found.commit)
        if stopped:   # users not examined, or with a send still pending
            self.counts["left"] = max(0, found.total - self.settled)
        if deliverer.credentials:
            return "credentials", "; ".join(deliverer.credentials.values())
        if self.timed_out:
            self.more = True
            return "partial", (f"the pass reached [schedule] max_pass_seconds "
                               f"({self.time_limit:g}s); the rest is sent next pass")
        if stopped:
            return "stopped", "stopped before the pass finished; the rest is sent next pass"
        owed = ("pending", "quarantined", "invalid_keys", "unreadable_rows")
        if any(self.counts[name] for name in owed):
            reasons = {str(ep): why for ep, why in deliverer.pending_reasons.items()}
            reasons.update({str(ep): why for ep, why in deliverer.held.items()})
            if self.counts["unreadable_rows"]:
                reasons["source"] = (f"{self.counts['unreadable_rows']} rows hold values the "
                                     "database cannot hand back (see `syncer status`)")
            return "partial", "; ".join(f"{ep}: {why}" for ep, why in sorted(reasons.items())) \
                or None
        return "ok", None

    async def _watch_stop(self) -> None:
        deadline = (time.monotonic() + self.time_limit) if self.time_limit else None
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                self.timed_out = True
                log.warning("pass.time_limit", seconds=self.time_limit)
                break
            if not self.rt.busy:   # the event loop is alive and waits on the network or a timer
                self.rt.beat()
            await asyncio.sleep(0.1)
        if self.deliverer is not None:
            self.deliverer.stop_accepting()

    async def _feed(self, found: Candidates) -> None:
        """Deletions first, all examined and weighed by the safety valve before any is sent;
        then changes, a chunk at a time, each weighed before it is sent (a re-created user is a
        deletion too)."""
        rt = self.rt
        assert self.deliverer is not None
        size = rt.config.source.chunk_size
        done = 0
        deletions: list[_Work] = []
        for keys in self.segments(found, deletions=True):
            deletions += await rt.in_source(self.examine, keys)
            done += len(keys)
        self.admit(deletions)
        self._submit(deletions)
        for keys in self.segments(found, deletions=False):
            if self.stop.is_set() or self.timed_out:
                break
            works = await rt.in_source(self.examine, keys)
            self.admit(works)
            self._submit(works)
            done += len(keys)
            self._progress("deliver", done, found.total)
            await self.deliverer.wait_below(2 * size)

    def _submit(self, works: Sequence[_Work]) -> None:
        assert self.deliverer is not None
        for work in works:
            if not work.ops:
                if work.write is None:
                    self.counts["unchanged"] += 1
                self.settled += 1
                self.writes.append(work.settled())
                continue
            self.tracking[work.record.user_id] = work
            self.deliverer.submit(work.ops)
        self._recorded.set()

    async def _record(self) -> None:
        """Write outcomes to the state as they arrive (one transaction per burst), so that a
        crash can only re-send what was in flight, not what was delivered a while ago. A write
        that fails keeps its rows for the next attempt (the final flush, which fails the pass
        if the state is still down: nothing is committed then)."""
        while True:
            await self._recorded.wait()
            self._recorded.clear()
            try:
                await self._flush()
            except SyncerError as exc:
                log.warning("state.write_failed", error=str(exc), will_retry=True)
            if not self._recording:
                return

    async def _flush(self) -> None:
        if self.writes:
            writes, self.writes = self.writes, []
            try:
                await self.rt.in_state(self.rt.state.write, writes, utcnow())
            except BaseException:
                self.writes[:0] = writes   # not written: they go with the next attempt
                raise

    async def _plan(self, found: Candidates) -> None:
        rt = self.rt
        done = 0
        chunks = itertools.chain(self.segments(found, deletions=True),
                                 self.segments(found, deletions=False))
        for keys in chunks:
            works = await rt.in_source(self.examine, keys)
            self.admit(works)
            for work in works:
                if not work.ops and work.write is None:
                    self.counts["unchanged"] += 1
                for op in work.ops:
                    self.plan.ops[str(op.endpoint)] += 1
                    if len(self.plan.samples) < _SAMPLE:
                        self.plan.samples.append(_sample(op))
            done += len(keys)
            self._progress("plan", done, found.total)
        for sender in rt.senders:
            n = self.plan.ops.get(str(sender.endpoint), 0)
            calls = math.ceil(n / sender.batch_size)
            self.plan.calls[str(sender.endpoint)] = calls
            self.plan.seconds[str(sender.endpoint)] = calls / sender.rate
        for name, n in self.plan.ops.items():
            self.counts[f"would:{name}"] = n

    def _progress(self, phase: str, done: int, total: int | None) -> None:
        if self.progress is not None:
            self.progress(phase, done, total)


# A soft-delete column that says nearly every row is deleted is read the wrong way (a "not set"
# marker such as MySQL's zero date, a column that is never NULL): the first pass would record
# everyone as deleted. Refused, with the reason, before anything is recorded.
_ALL_DELETED_SHARE: Final = 0.99
_ALL_DELETED_MIN_ROWS: Final = 10


def _refuse_a_soft_delete_that_deletes_everyone(config: Config, found: Candidates) -> None:
    deleted = len(found.deleted)
    if found.scanned < _ALL_DELETED_MIN_ROWS or deleted < _ALL_DELETED_SHARE * found.scanned:
        return
    column = config.capture.soft_delete_column
    raise ConfigError(
        f"[capture] soft_delete_column = {column!r} says {deleted} of {found.scanned} rows are "
        "deleted: that looks like a column read the wrong way, not a user base. It means "
        "deleted when it holds a date or timestamp, true, a non-zero number or a yes-word; "
        "NULL, false, 0, a zero date and other text mean alive. Check the column (or point "
        "soft_delete_column at the right one) before the first pass records everyone as "
        "deleted.")



def _sample(op: Op) -> Sample:
    if op.payload is None:
        return Sample(op.user_id, str(op.endpoint), op.reason, {})
    values = op.payload.values()
    names = op.changed_fields if op.changed_fields is not None else tuple(sorted(values))
    return Sample(op.user_id, str(op.endpoint), op.reason,
                  {name: values.get(name) for name in names})


def run_pass(rt: Runtime, *, reconcile: bool = False, confirm: bool = False,
             stop: threading.Event | None = None, progress: Progress | None = None,
             time_limit: float | None = None) -> PassResult:
    """One pass: send what changed, record what was delivered. With ``time_limit`` (the
    daemon), a pass that runs longer stops taking new work and leaves the rest to the next."""
    return asyncio.run(_Pass(rt, reconcile=reconcile, confirm=confirm, dry_run=False, stop=stop,
                             progress=progress, time_limit=time_limit).run())


def plan_pass(rt: Runtime, *, reconcile: bool = False,
              progress: Progress | None = None) -> PassResult:
    """What a pass would send; sends and records nothing."""
    return asyncio.run(_Pass(rt, reconcile=reconcile, confirm=False, dry_run=True, stop=None,
                             progress=progress).run())


__all__ = ["PassResult", "Plan", "Runtime", "plan_pass", "run_pass"]
