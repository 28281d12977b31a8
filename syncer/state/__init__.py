"""The state, in the roles it plays: the :class:`Ledger` (per user and destination, what
was delivered, or a tombstone; what is owed; quarantines and field problems), the :class:`PassLog`
(the history of passes), :class:`Requests` (operator requests for the running sender),
:class:`Cursors` (capture positions) and the :class:`History` (the audit trail, written by the
ledger with the users it records).

Two implementations of each: :mod:`syncer.state.sql` (SQLite or PostgreSQL, the real one) and
:mod:`syncer.state.memory` (for tests and dry runs). The contract tests run against both.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

from syncer.model import HistoryEntry, KeyKind, UserState, UserWrite
from syncer.results import PassCounts, PassKind, PassOutcome


@dataclass(frozen=True, slots=True)
class ScanRow:
    """One known user, as the reconcile merge needs it."""

    user_id: str
    key_int: int | None
    row_hash: int | None
    gone: bool
    dirty: bool
    source_key: str | None = None
    identity: int | None = None   # of ``[capture] created_column``, as last seen


@dataclass(frozen=True, slots=True)
class PassRecord:
    id: int
    started_at: dt.datetime
    finished_at: dt.datetime | None
    kind: PassKind
    mode: str
    outcome: PassOutcome
    counts: PassCounts = field(default_factory=PassCounts)
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


class Ledger(Protocol):
    """Per user: what the source gave last (row hash, deleted, seen alive), what each destination
    acknowledged (a fingerprint, or a tombstone), what is still owed (``dirty``), quarantines and
    field problems. Written only with what destinations acknowledged."""

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

    def lookup(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        """Everything the diff needs about these users (absent: never seen)."""

    def peek(self, user_ids: Sequence[str]) -> dict[str, ScanRow]:
        """The merge view (row hash, gone, dirty) of these users: cheaper than ``lookup``."""

    def dirty_users(self, limit: int) -> list[ScanRow]:
        """Users with something still owed (pending sends, operator requests), oldest first."""

    def forget_row_hashes(self, user_ids: Sequence[str]) -> None:
        """Deleted users whose source row is gone too: nothing of theirs is left to compare."""

    def pending(self) -> tuple[int, dt.datetime | None]:
        """How many users have sends still pending, and since when the oldest has waited."""

    def write(self, writes: Sequence[UserWrite], now: dt.datetime) -> None:
        """Record what passes settled for these users, in one transaction.

        :raises StateError: the state database failed; nothing of ``writes`` is recorded."""

    def counts(self) -> StateCounts:
        """Users by condition, deliveries and tombstones per destination."""

    def quarantined(self, limit: int) -> list[QuarantineRow]:
        """The newest quarantine entries."""

    def problems(self, limit: int) -> list[ProblemRow]:
        """The newest field problems (fields left out)."""

    def quarantined_ids(self, user_ids: Sequence[str] | None) -> set[str]:
        """The users in quarantine at any destination (all, or among these)."""

    def requeue_quarantined(self, user_ids: Sequence[str] | None) -> int:
        """Forget quarantine entries (all, or these users) and mark those users dirty; returns
        how many users were taken out of quarantine (a user not in it is left alone)."""

    def forget(self, user_ids: Sequence[str] | None) -> int:
        """Forget what was delivered (all, or these users) so they are sent again."""


class PassLog(Protocol):
    """The history of passes (``syncer status``), kept within ``[state] keep_passes``."""

    def start(self, kind: PassKind, mode: str, now: dt.datetime, instance: str | None) -> int:
        """Record a pass as running; returns its id."""

    def finish(self, pass_id: int, outcome: PassOutcome, counts: PassCounts,
               message: str | None, now: dt.datetime, kind: PassKind | None = None) -> None:
        """Record how the pass ended (``kind`` when it turned out another kind than it
        started as)."""

    def recent(self, limit: int) -> list[PassRecord]:
        """The newest passes, newest first."""

    def prune(self, keep: int, batch: int) -> int:
        """Delete the oldest passes beyond the newest ``keep``, at most ``batch`` of them (a
        short transaction); returns how many went."""


class History(Protocol):
    """The audit trail: every operation a destination acknowledged or refused, per user, as
    :meth:`Ledger.write` recorded it (``UserWrite.history``, in the same transaction). Kept
    within ``[state] history_days``."""

    def timeline(self, user_id: str, destination: str | None = None) -> list[HistoryEntry]:
        """One user's entries (at one destination, or all), oldest first."""

    def between(self, since: dt.datetime | None, until: dt.datetime | None, *,
                plain_updates: bool = True) -> Iterator[HistoryEntry]:
        """Entries acknowledged in [since, until) (None: unbounded), oldest first; without
        ``plain_updates``, only deletions, withdrawals and updates that carry a consent."""

    def prune(self, before: dt.datetime, batch: int) -> int:
        """Delete at most ``batch`` entries acknowledged before ``before`` (a short
        transaction); returns how many went."""


class Requests(Protocol):
    """What `syncer retry` and `syncer resync` ask of the running sender."""

    def add(self, kind: str, user_ids: Sequence[str] | None) -> int:
        """Leave a request for the running sender ("retry", "resync"; None: every user);
        returns how many entries were left."""

    def take(self) -> list[tuple[str, str | None]]:
        """The requests left so far, removed as they are taken."""


class Cursors(Protocol):
    """Where each capture stands (``watermark``, ``outbox``), and small settings of the state
    itself (``meta``: the fingerprint key's check value)."""

    def get(self, name: str) -> str | None:
        """A capture's position, or None before its first pass."""

    def set(self, name: str, value: str | None, now: dt.datetime) -> None:
        """Move a capture's position (None: forget it; the next pass starts over)."""

    def get_meta(self, name: str) -> str | None: ...

    def set_meta(self, name: str, value: str) -> None: ...


STATE_ID: Final = "state_id"


def state_id(cursors: Cursors) -> str:
    """This state's own id (made at first use): what it records where it consumes an outbox."""
    found = cursors.get_meta(STATE_ID)
    if found is None:
        found = uuid.uuid4().hex
        cursors.set_meta(STATE_ID, found)
    return found


class StateStore(Protocol):
    """The state, in the four roles it plays."""

    @property
    def ledger(self) -> Ledger: ...

    @property
    def passes(self) -> PassLog: ...

    @property
    def requests(self) -> Requests: ...

    @property
    def cursors(self) -> Cursors: ...

    @property
    def history(self) -> History: ...

    def close(self) -> None: ...
