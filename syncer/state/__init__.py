"""The state: per destination and user, what was delivered (a fingerprint) or a tombstone; the users
seen in the source; quarantined users; field problems; the history of passes; capture cursors.

Two implementations of one port: :mod:`syncer.state.sql` (SQLite or PostgreSQL, the real one) and
:mod:`syncer.state.memory` (for tests). The contract tests run against both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from syncer.model import KeyKind, UserState, UserWrite


@dataclass(frozen=True, slots=True)
class ScanRow:
    """One known user, as the reconcile merge needs it."""

    user_id: str
    key_int: int | None
    row_hash: int | None
    gone: bool
    dirty: bool
    source_key: str | None = None


@dataclass(frozen=True, slots=True)
class PassRecord:
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    kind: str
    mode: str
    outcome: str
    counts: dict[str, int] = field(default_factory=dict)
    message: str | None = None
    instance: str | None = None


@dataclass(frozen=True, slots=True)
class QuarantineRow:
    destination: str
    user_id: str
    reason: str
    since: dt.datetime
    last_attempt: dt.datetime
    attempts: int


@dataclass(frozen=True, slots=True)
class ProblemRow:
    user_id: str
    field: str
    reason: str
    since: dt.datetime


@dataclass(frozen=True, slots=True)
class StateCounts:
    known: int
    gone: int
    dirty: int
    quarantined: dict[str, int]
    delivered: dict[str, int]
    problems: int
    tombstones: dict[str, int] = field(default_factory=dict)


class StateStore(Protocol):
    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...

    def known_users(self) -> int:
        """Users seen in the source and not (fully) deleted."""

    def has_users(self) -> bool:
        """Whether any user was ever recorded (false before the very first pass)."""

    def scan(self, kind: KeyKind) -> Iterator[ScanRow]:
        """Every known user in the merge order for ``kind``: by key_int for integer keys (users
        without one last), else by user_id in binary (code point) order."""

    def scan_range(self, low: int | None, high: int | None) -> Iterator[ScanRow]:
        """Known users with an integer key in [low, high) (None: unbounded), by key."""

    def boundaries(self, every: int) -> list[int]:
        """Every ``every``-th integer key, in order: the edges of the reconcile's key ranges."""

    def block_sums(self, bounds: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
        """Per key range (as :meth:`syncer.source.Source.block_sums`): settled users (a row hash
        recorded, nothing pending) counted and their hashes summed the same way, and how many
        users there need a look (pending, or never settled)."""

    def unkeyed_users(self) -> int:
        """Known users without an integer key (they need the row-by-row merge)."""

    def lookup(self, user_ids: Sequence[str]) -> dict[str, UserState]: ...

    def peek(self, user_ids: Sequence[str]) -> dict[str, ScanRow]:
        """The merge view (row hash, gone, dirty) of these users: cheaper than ``lookup``."""

    def dirty_users(self, limit: int) -> list[ScanRow]: ...

    def forget_row_hashes(self, user_ids: Sequence[str]) -> None:
        """Deleted users whose source row is gone too: nothing of theirs is left to compare."""

    def pending(self) -> tuple[int, dt.datetime | None]:
        """How many users have sends still pending, and since when the oldest has waited."""

    def request(self, kind: str, user_ids: Sequence[str] | None) -> int:
        """Leave a request for the running sender ("retry", "resync"; None: every user)."""

    def take_requests(self) -> list[tuple[str, str | None]]:
        """The requests left so far, removed as they are taken."""

    def write(self, writes: Sequence[UserWrite], now: dt.datetime) -> None: ...

    def get_cursor(self, name: str) -> str | None: ...

    def set_cursor(self, name: str, value: str | None, now: dt.datetime) -> None: ...

    def start_pass(self, kind: str, mode: str, now: dt.datetime, instance: str | None) -> int: ...

    def finish_pass(self, pass_id: int, outcome: str, counts: dict[str, int],
                    message: str | None, now: dt.datetime, kind: str | None = None) -> None: ...

    def recent_passes(self, limit: int) -> list[PassRecord]: ...

    def prune_passes(self, keep: int, batch: int) -> int:
        """Delete the oldest passes beyond the newest ``keep``, at most ``batch`` of them (a
        short transaction); returns how many went."""

    def quarantined(self, limit: int) -> list[QuarantineRow]: ...

    def problems(self, limit: int) -> list[ProblemRow]: ...

    def counts(self) -> StateCounts: ...

    def quarantined_ids(self, user_ids: Sequence[str] | None) -> set[str]:
        """The users in quarantine at any destination (all, or among these)."""

    def requeue_quarantined(self, user_ids: Sequence[str] | None) -> int:
        """Forget quarantine entries (all, or these users) and mark those users dirty; returns
        how many users were taken out of quarantine (a user not in it is left alone)."""

    def forget(self, user_ids: Sequence[str] | None) -> int:
        """Forget what was delivered (all, or these users) so they are sent again."""

    def close(self) -> None: ...
