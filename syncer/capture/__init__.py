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

import datetime as dt
import itertools
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from syncer import normalize
from syncer.mapping import Mapping, identity_of
from syncer.model import RawRow
from syncer.normalize import Invalid
from syncer.source import Source
from syncer.state import ScanRow, StateStore

if TYPE_CHECKING:
    from syncer.live import LiveReader


class Keys:
    """Keys in the order the capture found them, compact: 64-bit integers (the usual primary
    key) in an array, 8 bytes each instead of about 40 in a list; any other key turns it into a
    list. An initial load of a million users holds a million of them."""

    __slots__ = ("_ints", "_other")

    def __init__(self, keys: Iterable[object] = ()) -> None:
        self._ints = array("q")
        self._other: list[object] | None = None
        for key in keys:
            self.append(key)

    def append(self, key: object) -> None:
        if self._other is None:
            if type(key) is int and -(2**63) <= key < 2**63:
                self._ints.append(key)
                return
            self._other = list(self._ints)
            self._ints = array("q")
        self._other.append(key)

    def __len__(self) -> int:
        return len(self._other) if self._other is not None else len(self._ints)

    def __iter__(self) -> Iterator[object]:
        return iter(self._other if self._other is not None else self._ints)


@dataclass(slots=True)
class Candidates:
    deleted: list[object] = field(default_factory=list)   # keys whose soft-delete flag is set
    absent: list[object] = field(default_factory=list)    # keys no longer in the source
    changed: Keys = field(default_factory=Keys)          # keys that may differ from the state
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (key as text, why)
    scanned: int = 0                                       # rows the capture looked at
    deletions: int = 0             # deletions the pass would send: what the safety valve weighs
    purged: list[str] = field(default_factory=list)  # gone users whose row is gone too
    more: bool = False             # the capture left work for an immediate next pass
    position: dict[str, object] = field(default_factory=dict)
    commit: Callable[[], None] | None = None               # run after the results are recorded
    reconcile: bool = False
    recreated: set[object] = field(default_factory=set)  # keys deleted and re-created since
    live: LiveReader | None = None   # what changes while the pass sends (see syncer.live)
    committed: dict[object, dt.datetime] = field(default_factory=dict)  # key: change's commit

    @property
    def total(self) -> int:
        return len(self.deleted) + len(self.absent) + len(self.changed)

    def take(self, ctx: CaptureContext, row: RawRow, state: ScanRow | None) -> None:
        """A row that differs from what the state recorded: a deletion, or a change (and, when
        ``created_column`` says another person holds the key now, a re-creation)."""
        if row.deleted:
            self.deleted.append(row.key)
            self.count_deletion(ctx, state)
            return
        self.changed.append(row.key)
        if replaced(ctx, row, state):
            self.recreated.add(row.key)
            self.count_deletion(ctx, state)

    def count_deletion(self, ctx: CaptureContext, state: ScanRow | None) -> None:
        """Weigh one deletion for the safety valve, early and cheaply (the pass weighs what it
        really sends again before sending it): a user the state has alive, or one it never saw
        when the first pass sends those too. A user the state already has deleted is left to
        the pass's exact count."""
        if state is None:
            self.deletions += ctx.count_unknown_deletions
        elif not state.gone:
            self.deletions += 1
        if ctx.valve_limit is not None and self.deletions > ctx.valve_limit:
            raise TooManyDeletions(self.deletions)


class TooManyDeletions(Exception):
    """Raised by a capture as soon as the safety valve's limit is passed (before the scan ends,
    so a truncated table costs no more memory than the limit)."""

    def __init__(self, deletions: int) -> None:
        super().__init__(deletions)
        self.deletions = deletions


def _nothing() -> None:
    pass


@dataclass(frozen=True, slots=True)
class CaptureContext:
    source: Source
    state: StateStore
    mapping: Mapping
    count_unknown_deletions: bool = True
    valve_limit: float | None = None      # None: count every deletion (plan, --confirm)
    beat: Callable[[], None] = _nothing   # called as work progresses (for the watchdog)
    stopping: Callable[[], bool] = bool   # true once the pass should stop (SIGTERM)

    def progress(self) -> None:
        """Work moved on: tell the watchdog, and stop here if the pass is stopping."""
        self.beat()
        if self.stopping():
            raise CaptureStopped()


class CaptureStopped(Exception):
    """The pass was asked to stop during the capture; nothing was sent, nothing committed."""


class Capture(Protocol):
    name: str

    def collect(self, ctx: CaptureContext) -> Candidates:
        """Find the candidates. Runs in a worker thread; may block on the databases."""

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        """Where the capture stands (for ``plan`` and ``status``), without changing anything."""

    def starts_with_snapshot(self, ctx: CaptureContext) -> bool:
        """Whether the next pass is a full snapshot (no position yet)."""


_CHUNK = 5000


def sort_rows(ctx: CaptureContext, rows: Iterable[RawRow], out: Candidates,
              seen: set[str]) -> None:
    """Keep the rows whose hash differs from the state's (or that are pending), sorted into
    deletions and changes. ``seen`` holds user ids already taken, so a user is taken once."""
    for chunk in _batched(rows):
        ctx.progress()
        valid: list[tuple[RawRow, str]] = []
        for row in chunk:
            try:
                uid = normalize.user_id(row.key)
            except Invalid as exc:
                out.invalid.append((repr(row.key)[:64], str(exc)))
                continue
            if uid not in seen:
                seen.add(uid)
                valid.append((row, uid))
        out.scanned += len(chunk)
        known = ctx.state.ledger.peek([uid for _, uid in valid])
        for row, uid in valid:
            st = known.get(uid)
            if (st is not None and not st.dirty and row.row_hash is not None
                    and st.row_hash == row.row_hash):
                continue
            out.take(ctx, row, st)


def replaced(ctx: CaptureContext, row: RawRow, state: ScanRow | None) -> bool:
    """``[capture] created_column`` names another person than the one syncer saw alive under
    this key: the key was deleted and re-created."""
    if state is None or state.gone or state.identity is None:
        return False
    column = ctx.mapping.created_column
    now = identity_of(column, row.created) if column else None
    return now is not None and now != state.identity


def weigh_recreations(ctx: CaptureContext, out: Candidates) -> None:
    """The re-created keys the outbox reported, weighed by the safety valve now (each means a
    deletion and a withdrawal of the previous person): only those with a row now and a user
    syncer saw alive count; the others are no re-creation at all."""
    if not out.recreated:
        return
    present = [k for k in out.changed if k in out.recreated]
    known = ctx.state.ledger.peek([uid for k in present
                                   if (uid := normalize.user_id_or_none(k)) is not None])
    kept: set[object] = set()
    for key in present:
        st = known.get(normalize.user_id_or_none(key) or "")
        if st is not None and not st.gone:
            kept.add(key)
            out.count_deletion(ctx, st)
    out.recreated = kept


def sort_keys(ctx: CaptureContext, keys: Sequence[object], out: Candidates,
              seen: set[str]) -> None:
    """Keys that may have changed (outbox rows, pending users): read their rows and sort them
    like :func:`sort_rows`; a key with no row is a deletion, unless the state already has it
    deleted everywhere."""
    for i in range(0, len(keys), _CHUNK):
        part = [k for k in keys[i:i + _CHUNK] if normalize.user_id_or_none(k) not in seen]
        rows = ctx.source.read(part, values=False)
        sort_rows(ctx, rows, out, seen)
        missing = [(k, uid) for k in part
                   if (uid := normalize.user_id_or_none(k)) is not None and uid not in seen]
        known = ctx.state.ledger.peek([uid for _, uid in missing])
        for key, uid in missing:
            seen.add(uid)
            st = known.get(uid)
            if st is not None and st.gone and not st.dirty:
                continue
            out.absent.append(key)
            out.count_deletion(ctx, st)


PENDING_BATCH = 100_000


def pending_keys(ctx: CaptureContext, out: Candidates) -> list[object]:
    """Users a previous pass could not finish (their sends are still pending, or an operator
    asked for them again); a full batch means there are more for the next pass."""
    rows = ctx.state.ledger.dirty_users(PENDING_BATCH)
    if len(rows) >= PENDING_BATCH:
        out.more = True
    return [ctx.source.typed_key(r.user_id, r.source_key) for r in rows]



def _batched(rows: Iterable[RawRow]) -> Iterator[list[RawRow]]:
    it = iter(rows)
    while chunk := list(itertools.islice(it, _CHUNK)):
        yield chunk
