"""Capture: which users may have changed since the last pass.

Three implementations of one port:

* :mod:`~syncer.capture.snapshot`: the whole table against the state (a merge in key order). Works
  on anything, catches everything; also the reconcile pass of the other modes.
* :mod:`~syncer.capture.watermark`: rows whose watermark column moved (``updated_at``).
* :mod:`~syncer.capture.outbox`: keys left by triggers in an outbox table.

A capture returns :class:`Candidates`: keys to read and diff, the keys known to be gone, and what to
do once the pass has recorded its results (advance a cursor, remove handled outbox rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from syncer.mapping import Mapping
from syncer.source import Source
from syncer.state import StateStore


@dataclass(slots=True)
class Candidates:
    deleted: list[object] = field(default_factory=list)   # keys whose soft-delete flag is set
    absent: list[object] = field(default_factory=list)    # keys no longer in the source
    changed: list[object] = field(default_factory=list)   # keys that may differ from the state
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (key as text, why)
    scanned: int = 0                                       # rows the capture looked at
    known_deleted: int = 0                                 # of `deleted`, users the state knew
    position: dict[str, object] = field(default_factory=dict)
    commit: Callable[[], None] | None = None               # run after the results are recorded
    reconcile: bool = False

    @property
    def total(self) -> int:
        return len(self.deleted) + len(self.absent) + len(self.changed)

    @property
    def known_deletions(self) -> int:
        """Deletions of users the state knows alive: what the safety valve weighs."""
        return self.known_deleted + len(self.absent)


@dataclass(frozen=True, slots=True)
class CaptureContext:
    source: Source
    state: StateStore
    mapping: Mapping


class Capture(Protocol):
    name: str

    def collect(self, ctx: CaptureContext) -> Candidates:
        """Find the candidates. Runs in a worker thread; may block on the databases."""

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        """Where the capture stands (for ``plan`` and ``status``), without changing anything."""
