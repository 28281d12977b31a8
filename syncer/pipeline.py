"""One pass: capture → examine (read, map, diff) → deliver → record, and its verdict.

This is the only module that wires the others together; the CLI and the daemon only call
:func:`run_pass` (or :func:`plan_pass`) with a :class:`~syncer.runtime.Runtime`.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from typing import Final

import structlog

from syncer import diff
from syncer.capture import Candidates, CaptureStopped, TooManyDeletions
from syncer.capture.snapshot import SnapshotCapture
from syncer.clock import utcnow
from syncer.config import Config
from syncer.deliver import Deliverer, DeliveryReport
from syncer.errors import ConfigError, SafetyValveTripped, SyncerError
from syncer.examine import Examiner, Rules, Work
from syncer.live import LiveLane, Turn, turn
from syncer.model import Outcome, Status
from syncer.plan import Plan
from syncer.recorder import Recorder, prune_history
from syncer.results import (
    BULK,
    DELIVERED,
    BulkProgress,
    PassCounts,
    PassKind,
    PassOutcome,
    PassResult,
)
from syncer.runtime import Runtime

log = structlog.get_logger("syncer.pipeline")

Progress = Callable[[str, int, int | None], None]

PRUNE_BATCH: Final = 500   # old passes deleted after each pass, at most
BULK_CHUNKS: Final = 4     # a pass with this many chunks to send or more is bulk work
BULK_EVERY: Final = 5.0    # seconds between two records of its progress
# A first pass looks at this many passes for one that completed (a state can hold passes and no
# user: every pass so far failed before recording anyone).
_HISTORY: Final = 50


class _Pass:
    def __init__(self, rt: Runtime, *, reconcile: bool, confirm: bool, dry_run: bool,
                 stop: threading.Event | None, progress: Progress | None,
                 time_limit: float | None = None) -> None:
        self.rt = rt
        self.confirm = confirm
        self.dry_run = dry_run
        self.stop = stop or threading.Event()
        self.progress = progress
        self.time_limit = time_limit
        self.timed_out = False
        self.counts = PassCounts()
        self.plan = Plan()
        self.capture = rt.capture(reconcile)
        self.kind = (PassKind.RECONCILE if isinstance(self.capture, SnapshotCapture)
                     or self.capture.starts_with_snapshot(rt.ctx) else PassKind.INCREMENTAL)
        self.rules = Rules()
        self.examiner = Examiner(rt, self.rules, self.counts)
        self.recorder = Recorder(rt)
        self.deliverer: Deliverer | None = None
        self.tracking: dict[str, Work] = {}   # one work per user in flight at a time
        self.parked: dict[str, object] = {}    # user id -> key to examine again once it settles
        self.live: LiveLane | None = None
        self._again_tasks: set[asyncio.Future[None]] = set()
        self.initial = False
        self.more = False
        self.settled = 0          # candidates done with for this pass (nothing left pending)
        self.new_deletions = 0    # deletions admitted through the safety valve
        self.valve_limit = math.inf

    # -- the pass and its record

    async def run(self) -> PassResult:
        rt = self.rt
        started = time.monotonic()
        mode = rt.config.capture.mode
        pass_id = None
        if not self.dry_run:
            pass_id = await rt.in_state(rt.state.passes.start, self.kind, mode, utcnow(),
                                        rt.instance)
            self.recorder.pass_id = pass_id
        log.info("pass.started", kind=self.kind, mode=mode, pass_id=pass_id)
        report: DeliveryReport | None = None
        try:
            outcome, message, report = await self._run()
        except SafetyValveTripped as exc:
            outcome, message = PassOutcome.VALVE, str(exc)
            log.error("pass.safety_valve", deletions=exc.deletions, known=exc.known,
                      fraction=exc.fraction)
        except ConfigError as exc:
            await self._finish(pass_id, PassOutcome.FAILED, str(exc))
            raise
        except SyncerError as exc:
            outcome, message = PassOutcome.FAILED, str(exc)
            log.error("pass.failed", error=str(exc))
        except BaseException as exc:
            await asyncio.shield(self._finish(pass_id, PassOutcome.FAILED, type(exc).__name__))
            raise
        if self.deliverer is not None and report is None:
            report = self.deliverer.report()
        if report is not None:
            self.counts.requests.update(report.requests)
            self.counts.credentials.update(report.credentials)
            self.counts.held.update(report.held)
        await self._finish(pass_id, outcome, message)
        seconds = time.monotonic() - started
        level = log.info if outcome in (PassOutcome.OK, PassOutcome.DRY_RUN) else (
            log.warning if outcome in (PassOutcome.PARTIAL, PassOutcome.STOPPED) else log.error)
        level("pass.completed", kind=self.kind, mode=mode, outcome=outcome,
              seconds=round(seconds, 3), pass_id=pass_id,
              **{k: v for k, v in self.counts.totals.items() if v})
        return PassResult(pass_id, self.kind, mode, outcome, self.counts,
                          report.credentials if report else {},
                          {str(ep): why for ep, why in report.held.items()} if report else {},
                          message, seconds, self.plan if self.dry_run else None,
                          self.more and outcome in (PassOutcome.OK, PassOutcome.PARTIAL),
                          dict(self.plan.position))

    async def _finish(self, pass_id: int | None, outcome: PassOutcome,
                      message: str | None) -> None:
        if pass_id is None:
            return
        rt = self.rt
        await rt.in_state(rt.state.passes.finish, pass_id, outcome, self.counts, message,
                          utcnow(), self.kind)
        try:   # keep the history within [state] keep_passes, a small batch after each pass
            await rt.in_state(rt.state.passes.prune, rt.config.state.keep_passes, PRUNE_BATCH)
            await rt.in_state(prune_history, rt.state, rt.config.state.history_days)
        except SyncerError as exc:
            log.warning("state.prune_failed", error=str(exc))

    async def _run(self) -> tuple[PassOutcome, str | None, DeliveryReport | None]:
        if not self.dry_run:
            await self._apply_requests()
        known = await self._prepare()
        found = await self._capture(known)
        if found is None:
            return PassOutcome.STOPPED, "stopped during the capture; nothing was sent", None
        if self.dry_run:
            await self._plan(found)
            return PassOutcome.DRY_RUN, None, None
        report = await self._deliver(found)
        outcome, message = self._verdict(found, report)
        return outcome, message, report

    # -- before the capture

    async def _apply_requests(self) -> None:
        """What `syncer retry`/`resync` asked while this instance was sending."""
        rt = self.rt
        requests = await rt.in_state(rt.state.requests.take)
        for kind in ("retry", "resync"):
            ids = [uid for k, uid in requests if k == kind]
            if not ids:
                continue
            everyone = None in ids
            ledger = rt.state.ledger
            users = await rt.in_state(ledger.requeue_quarantined if kind == "retry"
                                      else ledger.forget,
                                      None if everyone else [u for u in ids if u is not None])
            log.info("pass.operator_request", kind=kind, users=users,
                     scope="all" if everyone else "some")

    async def _prepare(self) -> int:
        """The rules of this pass and the safety valve's limit; returns the known users."""
        rt = self.rt
        self.rules.key_kind = await rt.in_source(rt.source.key_kind)
        self.initial = not await rt.in_state(rt.state.ledger.has_users) and not any(
            p.outcome in (PassOutcome.OK, PassOutcome.PARTIAL)
            for p in await rt.in_state(rt.state.passes.recent, _HISTORY))
        initial_deletions = rt.config.capture.initial_deletions
        self.rules.skip_history = self.initial and initial_deletions == "skip"
        self.rules.send_unseen = self.initial and initial_deletions == "send"
        known = await rt.known_users(fresh=self.dry_run)
        fraction = rt.config.capture.max_delete_fraction
        self.valve_limit = max(float(rt.config.capture.max_delete_floor), fraction * known)
        self.plan.known_users, self.plan.valve_limit = known, self.valve_limit
        return known

    # -- capture

    async def _capture(self, known: int) -> Candidates | None:
        rt = self.rt
        fraction = rt.config.capture.max_delete_fraction
        ctx = replace(rt.ctx, count_unknown_deletions=self.rules.send_unseen,
                      valve_limit=None if self.confirm or self.dry_run else self.valve_limit,
                      beat=rt.beat, stopping=self.stop.is_set)
        self._progress("capture", 0, None)
        try:
            found: Candidates = await rt.in_source(self.capture.collect, ctx)
        except TooManyDeletions as exc:
            raise SafetyValveTripped(exc.deletions, known, fraction, at_least=True) from None
        except CaptureStopped:
            return None
        if found.reconcile:
            self.kind = PassKind.RECONCILE
        if self.initial and found.reconcile:
            _refuse_a_soft_delete_that_deletes_everyone(rt.config, found)
        self.rules.retry_deletions = self.kind is PassKind.RECONCILE
        self.rules.recreated = frozenset(found.recreated)
        self.more = found.more
        self.counts.totals["scanned"] = found.scanned
        self.counts.totals["candidates"] = found.total
        for key, reason in found.invalid:
            self.examiner.invalid_key(key, reason)
        self.plan.known_deletions, self.plan.position = found.deletions, dict(found.position)
        if found.deletions > self.valve_limit and not self.confirm and not self.dry_run:
            raise SafetyValveTripped(found.deletions, known, fraction)
        return found

    def segments(self, found: Candidates, *, deletions: bool) -> Iterator[list[object]]:
        """The deletions (absent or soft-deleted keys), or the changes, in chunks of
        ``[source] chunk_size`` keys."""
        size = self.rt.config.source.chunk_size
        keys = (itertools.chain(found.absent, found.deleted) if deletions
                else iter(found.changed))
        while chunk := list(itertools.islice(keys, size)):
            yield chunk

    def admit(self, works: Sequence[Work]) -> None:
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

    # -- deliver

    async def _deliver(self, found: Candidates) -> DeliveryReport:
        """Feed the candidates to the destinations, record what they settle, and run the
        capture's commit (cursor, outbox rows) once everything is recorded."""
        rt = self.rt
        if found.purged:
            await rt.in_state(rt.state.ledger.forget_row_hashes, found.purged)
        self.recorder.committed = found.committed
        self.recorder.start()
        try:
            async with rt.http_client() as client, Deliverer(
                rt.senders, client, rt.policy, self.on_outcome, timeouts=rt.timeouts(),
                clock=rt.clock, sleep=rt.sleep or asyncio.sleep, observer=rt.observer,
                pacers=rt.pacers, feeding=True,
            ) as deliverer:
                self.deliverer = deliverer
                watcher = asyncio.create_task(self._watch_stop())
                live = self._start_live(found)
                try:
                    try:
                        await self._feed(found)
                    finally:
                        deliverer.feeding_done()
                    await deliverer.drain()
                finally:
                    if live is not None:
                        await self._end_live(live)
                    watcher.cancel()
                    await self.recorder.close()
        finally:
            await self.recorder.flush()  # what was delivered is recorded, even when it fails
            if found.total:
                rt.forget_known_users(found.total + (self.live.users if self.live else 0))
        if found.commit is not None and not self.stopping():
            await rt.in_source(found.commit)
        if self.stopping():   # users not examined, or with a send still pending
            self.counts.totals["left"] = max(0, found.total - self.settled)
        self.more = self.more or self.examiner.recreated
        return deliverer.report()

    def stopping(self) -> bool:
        """The pass takes no new work: stopped, out of time, or its live lane failed."""
        return self.stop.is_set() or self.timed_out or (
            self.live is not None and self.live.error is not None)

    def _start_live(self, found: Candidates) -> asyncio.Task[None] | None:
        """The live lane beside the bulk, where the capture has one (see :mod:`syncer.live`)."""
        if found.live is None:
            return None
        ctx = replace(self.rt.ctx, beat=self.rt.beat, stopping=self.stop.is_set)
        schedule = self.rt.config.schedule
        every = (schedule.gather_seconds if self.rt.config.capture.mode == "outbox"
                 else schedule.interval_seconds)
        self.live = LiveLane(self, found.live, ctx, every)
        return asyncio.create_task(self.live.run(), name="live")

    async def _end_live(self, task: asyncio.Task[None]) -> None:
        """Let the live round under way finish (its users recorded), then the parked ones."""
        assert self.live is not None and self.deliverer is not None
        self.live.stop()
        await task
        await self.deliverer.drain()
        if self.live.error is not None:
            raise self.live.error
        if self.live.rounds:
            log.info("live.summary", rounds=self.live.rounds, users=self.live.users)

    async def _feed(self, found: Candidates) -> None:
        """Deletions first, all examined and weighed by the safety valve before any is sent;
        then changes, a chunk at a time, each weighed before it is sent (a re-created user is a
        deletion too)."""
        rt = self.rt
        assert self.deliverer is not None
        size = rt.config.source.chunk_size
        done = 0
        deletions: list[Work] = []
        for keys in self.segments(found, deletions=True):
            deletions += await rt.in_source(self.examiner.examine, keys)
            done += len(keys)
        self.admit(deletions)
        self.submit(deletions)
        bulk = await self._bulk_started(found)
        try:
            for keys in self.segments(found, deletions=False):
                if self.stopping():
                    break
                works = await rt.in_source(self.examiner.examine, keys)
                self.admit(works)
                self.submit(works)
                done += len(keys)
                self._progress("deliver", done, found.total)
                if bulk is not None:
                    await self._bulk_progress(bulk, done)
                await self.deliverer.wait_below(2 * size)
        finally:
            if bulk is not None:
                rt.observer.bulk(None)
                await rt.in_state(rt.state.cursors.set, BULK, None, utcnow())

    async def _bulk_started(self, found: Candidates) -> BulkProgress | None:
        """A pass with more than a few chunks to send is bulk work: kept in the state for
        `syncer status` (how far, how long left) and in the metrics."""
        if found.total < BULK_CHUNKS * self.rt.config.source.chunk_size:
            return None
        kind = ("initial" if self.initial else
                "reconcile" if self.kind is PassKind.RECONCILE else "backlog")
        now = time.time()
        bulk = BulkProgress(kind, found.total, 0, now, now)
        await self._bulk_progress(bulk, 0, force=True)
        return bulk

    async def _bulk_progress(self, bulk: BulkProgress, done: int, force: bool = False) -> None:
        now = time.time()
        bulk.done = done
        if force or now - bulk.updated >= BULK_EVERY:
            bulk.updated = now
            self.rt.observer.bulk(bulk)
            await self.rt.in_state(self.rt.state.cursors.set, BULK, bulk.to_json(), utcnow())

    def submit(self, works: Sequence[Work], live: bool = False) -> None:
        """Hand the works' operations to the deliverer, one work per user at a time: a newer
        reading of a user replaces an older one still queued, or waits for it to settle (and
        is then examined again); an older reading is dropped (see :func:`syncer.live.turn`)."""
        assert self.deliverer is not None
        for work in works:
            uid = work.record.user_id
            old = self.tracking.get(uid)
            if old is not None and not self._supersedes(old, work):
                continue
            if not work.ops:
                if work.write is None:
                    self.counts.add("unchanged")
                self._done_with(work)
                self.recorder.add(work.settled())
                continue
            self.tracking[uid] = work
            self.deliverer.submit(work.ops)
        self.recorder.nudge()

    def _supersedes(self, old: Work, new: Work) -> bool:
        """Whether ``new`` (another reading of ``old``'s user) goes to the deliverer now (see
        :func:`syncer.live.turn`)."""
        assert self.deliverer is not None
        match turn(old, new, self.deliverer.cancel):
            case Turn.REPLACE:
                del self.tracking[old.record.user_id]
                if not old.live:
                    self.settled += 1
                return True
            case Turn.PARK:
                self.parked[new.record.user_id] = new.record.source_key
            case _:
                self._done_with(new)
        return False

    def _done_with(self, work: Work) -> None:
        if work.live:
            if self.live is not None:
                self.live.settled(work.record.user_id)
        else:
            self.settled += 1

    def _examine_again(self, user_id: str) -> None:
        """A live reading waited for an older one of the same user, which has settled now."""
        task = asyncio.ensure_future(self._again(user_id, self.parked.pop(user_id)))
        self._again_tasks.add(task)
        task.add_done_callback(self._again_tasks.discard)

    async def _again(self, user_id: str, key: object) -> None:
        live = self.live
        assert live is not None
        try:
            await self.recorder.flush()
            works = await self.rt.in_source(self.examiner.examine, [key], True)
            self.admit(works)
            self.submit(works, live=True)
            if not any(w.record.user_id == user_id for w in works):
                live.settled(user_id)
        except Exception as exc:   # the live lane reports it and the pass stops feeding
            live.error = exc
            live.settled(user_id)

    def on_outcome(self, outcome: Outcome) -> None:
        op = outcome.op
        self.rt.beat()
        work = self.tracking.get(op.user_id)
        if work is None:  # cannot happen: every user is examined once per pass
            log.error("pass.untracked_outcome", user_id=op.user_id, endpoint=str(op.endpoint))
            return
        work.outcomes.append(outcome)
        if outcome.status is Status.DELIVERED:
            self.counts.add(DELIVERED[op.endpoint])
        elif outcome.status is Status.QUARANTINED:
            self.counts.add("quarantined")
            self.counts.quarantined[op.endpoint] += 1
        else:
            self.counts.add("pending")
            self.counts.pending[op.endpoint] += 1
        if len(work.outcomes) == len(work.ops):
            del self.tracking[op.user_id]
            if work.live:
                self._done_with(work)
            elif all(o.status is not Status.PENDING for o in work.outcomes):
                self.settled += 1
            self.recorder.settle(work)
            self.recorder.nudge()
            if op.user_id in self.parked:
                self._examine_again(op.user_id)

    async def _watch_stop(self) -> None:
        deadline = (time.monotonic() + self.time_limit) if self.time_limit else None
        while not self.stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                self.timed_out = True
                log.warning("pass.time_limit", seconds=self.time_limit)
                break
            if not self.rt.heartbeat.busy:   # the loop is alive, waiting on the network
                self.rt.beat()
            await asyncio.sleep(0.1)
        if self.deliverer is not None:
            self.deliverer.stop_accepting()

    # -- verdict

    def _verdict(self, found: Candidates, report: DeliveryReport
                 ) -> tuple[PassOutcome, str | None]:
        if report.credentials:
            return PassOutcome.CREDENTIALS, "; ".join(report.credentials.values())
        if self.timed_out:
            self.more = True
            return PassOutcome.PARTIAL, (f"the pass reached [schedule] max_pass_seconds "
                                         f"({self.time_limit:g}s); the rest is sent next pass")
        if self.stop.is_set():
            return PassOutcome.STOPPED, ("stopped before the pass finished; the rest is sent "
                                         "next pass")
        owed = ("pending", "quarantined", "invalid_keys", "unreadable_rows")
        if not any(self.counts[name] for name in owed):
            return PassOutcome.OK, None
        reasons = {str(ep): why for ep, why in report.pending.items()}
        reasons.update({str(ep): why for ep, why in report.held.items()})
        if self.counts["unreadable_rows"]:
            reasons["source"] = (f"{self.counts['unreadable_rows']} rows hold values the "
                                 "database cannot hand back (see `syncer status`)")
        message = "; ".join(f"{ep}: {why}" for ep, why in sorted(reasons.items()))
        return PassOutcome.PARTIAL, message or None

    # -- plan (dry run)

    async def _plan(self, found: Candidates) -> None:
        rt = self.rt
        done = 0
        chunks = itertools.chain(self.segments(found, deletions=True),
                                 self.segments(found, deletions=False))
        for keys in chunks:
            works = await rt.in_source(self.examiner.examine, keys)
            self.admit(works)
            for work in works:
                if not work.ops and work.write is None:
                    self.counts.add("unchanged")
                self.plan.add(work.ops)
            done += len(keys)
            self._progress("plan", done, found.total)
        self.plan.estimate(rt.senders)
        self.counts.would.update(self.plan.ops)

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


__all__ = ["Progress", "plan_pass", "run_pass"]
