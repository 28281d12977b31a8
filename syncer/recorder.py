"""Recording what was settled: each user's state row written once the destinations answered for
all its operations, behind the deliveries (one transaction per burst), so a crash can only re-send
what was in flight, never drop what was acknowledged a while ago. The audit trail's entries
(:mod:`syncer.history`) go with the user's row, in the same transaction."""

from __future__ import annotations

import asyncio
import datetime as dt

import structlog

from syncer import history
from syncer.clock import utcnow
from syncer.errors import SyncerError
from syncer.examine import Work
from syncer.metrics import Metrics
from syncer.model import HistoryEntry, UserWrite
from syncer.runtime import Runtime
from syncer.state import StateStore

log = structlog.get_logger("syncer.recorder")

HISTORY_PRUNE_BATCH = 2000   # audit-trail entries deleted after each pass, at most


class Recorder:
    """Write-behind of settled users for one pass. Start it with :meth:`run` as a task, hand it
    writes with :meth:`add`, and end it with :meth:`close` (never cancel it: a queued write must
    not be lost); :meth:`flush` writes what is left and raises if the state is still down."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._writes: list[UserWrite] = []
        self._wake = asyncio.Event()
        self._running = True
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()   # a flush returns only once earlier writes are done
        self.pass_id: int | None = None
        # When each key's change was committed, where the capture knows it (source key: time)
        self.committed: dict[object, dt.datetime] = {}
        self._trail = rt.config.state.history_days > 0

    def add(self, write: UserWrite) -> None:
        self._writes.append(write)

    def settle(self, work: Work) -> None:
        """Record a user whose operations all have their outcome, with its audit trail."""
        entries: tuple[HistoryEntry, ...] = ()
        if work.outcomes and self._trail:
            entries = history.entries(work.outcomes, self.pass_id,
                                      self.committed.get(work.record.source_key))
        self._writes.append(work.settled(entries))

    def nudge(self) -> None:
        """Writes are waiting: the running loop takes them at its next turn."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def _run(self) -> None:
        """A write that fails keeps its rows for the next attempt (at the latest the final
        flush, which fails the pass if the state is still down)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except SyncerError as exc:
                log.warning("state.write_failed", error=str(exc), will_retry=True)
            if not self._running:
                return

    async def close(self) -> None:
        self._running = False
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def flush(self) -> None:
        """Write what is waiting; when it returns, everything added before is in the state."""
        async with self._lock:
            if not self._writes:
                return
            writes, self._writes = self._writes, []
            try:
                await self.rt.in_state(self.rt.state.ledger.write, writes, utcnow())
            except BaseException:
                self._writes[:0] = writes   # not written: they go with the next attempt
                raise
        if isinstance(self.rt.observer, Metrics):
            self.rt.observer.acknowledged(e for w in writes for e in w.history)



def prune_history(state: StateStore, days: int) -> int:
    """Keep the audit trail within ``[state] history_days``: a small batch after each pass (a
    short transaction; a backlog goes over the next passes). 0 days: there is no trail."""
    if days <= 0:
        return 0
    return state.history.prune(utcnow() - dt.timedelta(days=days), HISTORY_PRUNE_BATCH)
