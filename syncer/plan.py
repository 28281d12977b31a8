"""``syncer plan``: what a pass would send, per endpoint, how many calls that makes and how long it
would take under the rate limits, with a sample of the operations and the fields they change."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from syncer.destinations import Sender
from syncer.model import Endpoint, Op

SAMPLE_SIZE: Final = 20


@dataclass(frozen=True, slots=True)
class Sample:
    user_id: str
    endpoint: Endpoint
    reason: str
    fields: dict[str, object]  # field -> new value (plan output only; never logged)

    @classmethod
    def of(cls, op: Op) -> Sample:
        if op.payload is None:
            return cls(op.user_id, op.endpoint, op.reason, {})
        values = op.payload.values()
        names = op.changed_fields if op.changed_fields is not None else tuple(sorted(values))
        return cls(op.user_id, op.endpoint, op.reason, {name: values.get(name) for name in names})


@dataclass(slots=True)
class Plan:
    ops: Counter[Endpoint] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    calls: dict[Endpoint, int] = field(default_factory=dict)
    seconds: dict[Endpoint, float] = field(default_factory=dict)
    known_users: int = 0
    known_deletions: int = 0
    valve_limit: float = 0.0
    position: dict[str, object] = field(default_factory=dict)

    def add(self, ops: Iterable[Op]) -> None:
        for op in ops:
            self.ops[op.endpoint] += 1
            if len(self.samples) < SAMPLE_SIZE:
                self.samples.append(Sample.of(op))

    def estimate(self, senders: Sequence[Sender]) -> None:
        """Calls per endpoint at the documented batch sizes, and their time at the rates."""
        for sender in senders:
            calls = math.ceil(self.ops.get(sender.endpoint, 0) / sender.batch_size)
            self.calls[sender.endpoint] = calls
            self.seconds[sender.endpoint] = calls / sender.rate

    @property
    def estimated_seconds(self) -> float:
        return max(self.seconds.values(), default=0.0)

    @property
    def valve_trips(self) -> bool:
        return self.known_deletions > self.valve_limit
