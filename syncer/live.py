"""The live lane: while a pass sends bulk work (an initial load, a reconcile, a resync, a large
backlog), the live capture is looked at again and again, and what it finds goes ahead of the bulk.

A pass feeds its candidates a chunk at a time (the bulk). Beside it, :class:`LiveLane` asks the
capture's :class:`LiveReader` for what changed since the pass began (new outbox rows every
``[schedule] gather_seconds``; rows whose watermark moved every ``interval_seconds``), examines
those users at once and submits their operations one step ahead of the bulk ones of their kind
(:data:`syncer.model.LIVE`): a withdrawal or a deletion found live is the next request of its
endpoints, an ordinary update found live leaves before the bulk remainder. One pacer per endpoint
serves both, so the rate limits hold across them.

Rounds are sequential: a round's users are delivered (or left pending) and recorded before its
outbox rows are removed, exactly as a pass does. A user examined live while an older (bulk) reading
of it is still queued takes that reading's place; if the older one is already on its way, the live
one waits for it to settle and is examined again, so a stale reading can never land after a newer
one (see :meth:`syncer.pipeline._Pass.submit`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import structlog

from syncer.capture import CaptureContext, CaptureStopped

if TYPE_CHECKING:
    from syncer.examine import Work
    from syncer.model import Op
    from syncer.pipeline import _Pass

log = structlog.get_logger("syncer.live")


@dataclass(slots=True)
class LiveRound:
    """What the live capture found: keys to examine now, and what to do once they are
    recorded (remove the outbox rows)."""

    keys: list[object] = field(default_factory=list)
    commit: Callable[[], None] | None = None
    committed: dict[object, dt.datetime] = field(default_factory=dict)  # key: commit time


class LiveReader(Protocol):
    def read(self, ctx: CaptureContext) -> LiveRound | None:
        """What changed since the last look (None: nothing). Runs on the source thread."""


class Turn(enum.Enum):
    """What becomes of a user's new reading while an older one is in the pass."""

    SEND = "send"        # nothing older: send it
    REPLACE = "replace"  # the older one's operations were all still queued: taken back
    PARK = "park"        # the older one is on its way: examine the user again once it settled
    DROP = "drop"        # the new one is a bulk reading (or older): the live capture covers it


def turn(old: Work | None, new: Work, cancel: Callable[[Sequence[Op]], bool]) -> Turn:
    """DBLog's rule, per user: a live reading supersedes a bulk one read before it, and a
    stale reading never lands after a newer one. A bulk reading behind one in flight is
    dropped: any later change of that user shows up in the live capture."""
    if old is None:
        return Turn.SEND
    if not new.live or new.seq < old.seq:
        return Turn.DROP
    if not old.outcomes and cancel(old.ops):
        return Turn.REPLACE
    return Turn.PARK


class LiveLane:
    """Runs the live rounds of one pass until :meth:`stop`."""

    def __init__(self, owner: _Pass, reader: LiveReader, ctx: CaptureContext,
                 every: float) -> None:
        self.owner = owner
        self.reader = reader
        self.ctx = ctx
        self.every = every
        self._stop = asyncio.Event()
        self._waiting: set[str] = set()
        self._settled = asyncio.Event()
        self.rounds = 0
        self.users = 0
        self.error: BaseException | None = None

    def stop(self) -> None:
        """Finish the round under way, then end."""
        self._stop.set()

    def settled(self, user_id: str) -> None:
        """A user of the current round has its outcomes (or needed nothing)."""
        self._waiting.discard(user_id)
        if not self._waiting:
            self._settled.set()

    async def run(self) -> None:
        """Rounds until stopped; an error (the safety valve, a database error) is kept in
        :attr:`error` and stops the pass's feeding instead of escaping."""
        try:
            while not self._stop.is_set():
                try:
                    await asyncio.wait_for(self._stop.wait(), self.every)
                    return
                except TimeoutError:
                    pass
                if self.owner.stopping():   # SIGTERM, the time limit: the next pass goes on
                    return
                await self._round()
        except CaptureStopped:
            return
        except Exception as exc:
            self.error = exc
            log.error("live.failed", error=str(exc)[:300])

    async def _round(self) -> None:
        rt, owner = self.owner.rt, self.owner
        found = await rt.in_source(self.reader.read, self.ctx)
        if found is None:
            return
        if found.keys:
            # Every user settled so far is in the state before these are diffed against it.
            await owner.recorder.flush()
            for key, moment in found.committed.items():   # for the audit trail
                owner.recorder.committed.setdefault(key, moment)
            works = await rt.in_source(owner.examiner.examine, found.keys, True)
            owner.admit(works)
            self._waiting = {w.record.user_id for w in works}
            self._settled.clear()
            if not self._waiting:
                self._settled.set()
            owner.submit(works, live=True)
            await self._settled.wait()
            self.rounds += 1
            self.users += len(works)
            rt.observer.live(len(works))
            log.debug("live.round", users=len(works))
        await owner.recorder.flush()
        if found.commit is not None:
            await rt.in_source(found.commit)
