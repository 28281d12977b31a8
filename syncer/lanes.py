"""One endpoint's queue: operations waiting by priority, taken in batches of up to the documented
size, with retries and the parts of split batches waiting their turn. No I/O: the deliverer
(:mod:`syncer.deliver`) runs a worker per lane that sends what :meth:`Lane.take` hands it."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from syncer.destinations import Sender
from syncer.model import NORMAL, URGENT, Endpoint, Op
from syncer.ratelimit import AsyncRateLimiter

# A batch that keeps getting 5xx or timeouts while the endpoint accepts other requests carries a
# user the API cannot take: it is narrowed down like a 400, with fewer tries per part, and at
# most this many parts per endpoint and pass (the cost when the API is simply down).
NARROWING_BUDGET: Final = 32

_order = itertools.count()


@dataclass(slots=True)
class Batch:
    """Operations sent in one request, and what happened to them so far."""

    ops: list[Op]
    priority: int
    attempts: int = 0
    throttled: int = 0
    narrowing: bool = False           # a part of a batch that kept failing with 5xx/timeouts
    failing_since: tuple[int, int] | None = None  # the lane's (successes, failures) then
    own_failures: int = 0             # of this batch and of those it was split from
    sent_at: float | None = None      # wall time its last request left (the audit trail)

    @property
    def urgent(self) -> bool:
        return self.priority <= URGENT


@dataclass(slots=True)
class Lane:
    sender: Sender
    limiter: AsyncRateLimiter
    slots: asyncio.Semaphore
    queues: dict[int, deque[Op]] = field(default_factory=dict)   # priority -> operations
    ready: list[tuple[int, int, Batch]] = field(default_factory=list)   # retries and parts
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    blocked: str | None = None        # why nothing more is sent there in this pass
    requests: int = 0
    rejected_in_a_row: int = 0
    successes: int = 0                # requests the endpoint accepted in this pass
    failures: int = 0                 # requests that got a 5xx, a timeout or no answer
    narrowing_budget: int = NARROWING_BUDGET
    explored: bool = False            # split a failing batch once without evidence

    @property
    def endpoint(self) -> Endpoint:
        return self.sender.endpoint

    def push(self, op: Op) -> None:
        self.queues.setdefault(op.priority, deque()).append(op)
        self.wake.set()

    def requeue(self, batch: Batch) -> None:
        """A retry or a part of a split batch: it goes before new operations of its priority."""
        heapq.heappush(self.ready, (batch.priority, next(_order), batch))
        self.wake.set()

    def can_take(self, feeding: bool) -> bool:
        """Whether :meth:`take` would hand out a batch now."""
        if self.ready:
            return True
        waiting = [p for p, q in self.queues.items() if q]
        if not waiting:
            return False
        return min(waiting) < NORMAL or not feeding or self.queued() >= self.sender.batch_size

    def take(self, feeding: bool) -> Batch | None:
        """The next batch: a retry or a part first (unless more urgent work waits), then new
        operations, most urgent first, topped up with less urgent ones. While operations are
        still being fed, a batch with nothing urgent in it only leaves full, so a pass makes no
        needless calls."""
        waiting = sorted(p for p, q in self.queues.items() if q)
        best = waiting[0] if waiting else None
        if self.ready and (best is None or self.ready[0][0] <= best):
            return heapq.heappop(self.ready)[2]
        if best is None:
            return None
        size = self.sender.batch_size
        if best >= NORMAL and feeding and self.queued() < size:
            return None
        ops: list[Op] = []
        for priority in waiting:
            queue = self.queues[priority]
            while queue and len(ops) < size:
                ops.append(queue.popleft())
        return Batch(ops, best)

    def holds(self, ops: list[Op]) -> bool:
        """Whether every one of these operations still waits in the queues (none taken into a
        request yet)."""
        for op in ops:
            queue = self.queues.get(op.priority)
            if queue is None or not any(o is op for o in queue):
                return False
        return True

    def withdraw(self, ops: list[Op]) -> None:
        """Take these operations (see :meth:`holds`) out of the queues."""
        for op in ops:
            queue = self.queues[op.priority]
            for i, o in enumerate(queue):
                if o is op:
                    del queue[i]
                    break

    def queued(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def drop(self) -> list[Op]:
        """Everything waiting (new, retries, parts), taken out."""
        ops = [op for q in self.queues.values() for op in q]
        ops += [op for _, _, batch in self.ready for op in batch.ops]
        self.queues.clear()
        self.ready.clear()
        return ops
