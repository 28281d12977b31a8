"""The state in memory: the same port as the SQL store, for unit tests and dry runs."""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

from syncer.clock import utcnow
from syncer.model import (
    Delivered,
    HistoryEntry,
    KeyKind,
    Operation,
    Quarantine,
    UserState,
    UserWrite,
)
from syncer.results import PassCounts, PassKind, PassOutcome
from syncer.state import PassRecord, ProblemRow, QuarantineRow, ScanRow, StateCounts


@dataclass
class _User:
    key_int: int | None
    source_key: str | None
    row_hash: int | None
    gone: bool
    dirty: bool
    updated_at: dt.datetime
    dirty_since: dt.datetime | None = None
    seen_alive: bool = False
    identity: int | None = None
    recreating: bool = False
    deliveries: dict[str, tuple[Delivered, dt.datetime]] = field(default_factory=dict)
    quarantine: dict[str, QuarantineRow] = field(default_factory=dict)
    q_fingerprints: dict[str, bytes] = field(default_factory=dict)
    q_transient: dict[str, bool] = field(default_factory=dict)
    problems: dict[str, ProblemRow] = field(default_factory=dict)


class MemoryLedger:
    """:class:`syncer.state.Ledger` in memory."""

    def __init__(self, history: MemoryHistory | None = None) -> None:
        self.users: dict[str, _User] = {}
        self.history = history if history is not None else MemoryHistory()

    def known_users(self) -> int:
        return sum(1 for u in self.users.values() if not u.gone)

    def has_users(self) -> bool:
        return bool(self.users)

    def scan(self, kind: KeyKind) -> Iterator[ScanRow]:
        rows = [self._scan_row(uid, u) for uid, u in self.users.items()]
        if kind is KeyKind.INT:
            with_int = sorted((r for r in rows if r.key_int is not None),
                              key=lambda r: r.key_int or 0)
            rest = sorted((r for r in rows if r.key_int is None), key=lambda r: r.user_id)
            yield from with_int + rest
        else:
            yield from sorted(rows, key=lambda r: r.user_id)

    def scan_range(self, low: int | None, high: int | None) -> Iterator[ScanRow]:
        rows = [self._scan_row(uid, u) for uid, u in self.users.items()
                if u.key_int is not None and (low is None or u.key_int >= low)
                and (high is None or u.key_int < high)]
        return iter(sorted(rows, key=lambda r: r.key_int or 0))

    def boundaries(self, every: int) -> list[int]:
        keys = sorted(u.key_int for u in self.users.values() if u.key_int is not None)
        return keys[::every]

    def block_sums(self, bounds: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
        out: dict[int, list[int]] = {}
        for u in self.users.values():
            if u.key_int is None:
                continue
            entry = out.setdefault(bisect.bisect_right(bounds, u.key_int), [0, 0, 0, 0])
            if u.row_hash is not None and not u.dirty:
                entry[0] += 1
                entry[1] += u.row_hash & 0xFFFFFFFF
                entry[2] += (u.row_hash >> 32) & 0xFFFFFFFF
            if u.dirty or (u.row_hash is None and not u.gone):
                entry[3] += 1
        return {b: (n, lo, hi, look) for b, (n, lo, hi, look) in out.items() if n or look}

    def unkeyed_users(self) -> int:
        return sum(1 for u in self.users.values() if u.key_int is None and not u.gone)

    @staticmethod
    def _scan_row(uid: str, u: _User) -> ScanRow:
        return ScanRow(uid, u.key_int, u.row_hash, u.gone, u.dirty, u.source_key, u.identity)

    def lookup(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        out: dict[str, UserState] = {}
        for uid in user_ids:
            u = self.users.get(uid)
            if u is None:
                continue
            out[uid] = UserState(
                uid, u.row_hash, u.gone, u.dirty,
                {d: entry[0] for d, entry in u.deliveries.items()},
                {d: Quarantine(d, u.q_fingerprints[d], q.reason, u.q_transient.get(d, False),
                               q.last_attempt)
                 for d, q in u.quarantine.items()},
                u.seen_alive, u.identity, u.recreating,
            )
        return out

    def peek(self, user_ids: Sequence[str]) -> dict[str, ScanRow]:
        return {uid: self._scan_row(uid, self.users[uid]) for uid in user_ids
                if uid in self.users}

    def pending(self) -> tuple[int, dt.datetime | None]:
        times = [u.dirty_since or u.updated_at for u in self.users.values() if u.dirty]
        return len(times), min(times, default=None)

    def forget_row_hashes(self, user_ids: Sequence[str]) -> None:
        for uid in user_ids:
            u = self.users.get(uid)
            if u is not None and u.gone:
                u.row_hash = None

    def dirty_users(self, limit: int) -> list[ScanRow]:
        dirty = sorted(((u.updated_at, uid) for uid, u in self.users.items() if u.dirty))
        return [self._scan_row(uid, self.users[uid]) for _, uid in dirty[:limit]]

    def write(self, writes: Sequence[UserWrite], now: dt.datetime) -> None:
        self.history.append([e for w in writes for e in w.history])
        for w in writes:
            u = self.users.get(w.user_id)
            if u is None:
                u = self.users[w.user_id] = _User(w.key_int, w.source_key, w.row_hash, w.gone,
                                                  w.dirty, now)
            u.key_int, u.source_key, u.row_hash = w.key_int, w.source_key, w.row_hash
            u.dirty_since = (u.dirty_since if u.dirty else None) or now if w.dirty else None
            u.gone, u.dirty, u.updated_at = w.gone, w.dirty, now
            u.seen_alive, u.identity, u.recreating = w.seen_alive, w.identity, w.recreating
            for dest, d in w.deliveries.items():
                if d is None:
                    u.deliveries.pop(dest, None)
                else:
                    u.deliveries[dest] = (d, now)
            for q in w.quarantine_set:
                old = u.quarantine.get(q.destination)
                same = old is not None and u.q_fingerprints[q.destination] == q.fingerprint
                u.quarantine[q.destination] = QuarantineRow(
                    q.destination, w.user_id, q.reason, old.since if old and same else now, now,
                    (old.attempts + 1) if old else 1)
                u.q_fingerprints[q.destination] = q.fingerprint
                u.q_transient[q.destination] = q.transient
            for dest in w.quarantine_clear:
                u.quarantine.pop(dest, None)
                u.q_fingerprints.pop(dest, None)
                u.q_transient.pop(dest, None)
            if w.problems is not None:
                u.problems = {
                    p.field: (u.problems.get(p.field) and replace(u.problems[p.field],
                                                                 reason=p.reason))
                    or ProblemRow(w.user_id, p.field, p.reason, now)
                    for p in w.problems
                }

    def quarantined(self, limit: int) -> list[QuarantineRow]:
        rows = [q for u in self.users.values() for q in u.quarantine.values()]
        rows.sort(key=lambda q: (-q.since.timestamp(), q.user_id))
        return rows[:limit]

    def problems(self, limit: int) -> list[ProblemRow]:
        rows = [p for u in self.users.values() for p in u.problems.values()]
        rows.sort(key=lambda p: (-p.since.timestamp(), p.user_id, p.field))
        return rows[:limit]

    def counts(self) -> StateCounts:
        quarantined: dict[str, int] = {}
        delivered: dict[str, int] = {}
        tombstones: dict[str, int] = {}
        for u in self.users.values():
            for dest in u.quarantine:
                quarantined[dest] = quarantined.get(dest, 0) + 1
            for dest, (d, _) in u.deliveries.items():
                bucket = tombstones if d.deleted else delivered
                bucket[dest] = bucket.get(dest, 0) + 1
        return StateCounts(
            self.known_users(), sum(u.gone for u in self.users.values()),
            sum(u.dirty for u in self.users.values()), quarantined, delivered,
            sum(1 for u in self.users.values() if u.problems), tombstones)

    def quarantined_ids(self, user_ids: Sequence[str] | None) -> set[str]:
        ids = list(self.users) if user_ids is None else [i for i in user_ids if i in self.users]
        return {uid for uid in ids if self.users[uid].quarantine}

    def requeue_quarantined(self, user_ids: Sequence[str] | None) -> int:
        ids = self.quarantined_ids(user_ids)
        for uid in ids:
            u = self.users[uid]
            u.quarantine.clear()
            u.q_fingerprints.clear()
            u.q_transient.clear()
            u.dirty, u.row_hash = True, None
            u.dirty_since = u.dirty_since or utcnow()
        return len(ids)

    def forget(self, user_ids: Sequence[str] | None) -> int:
        ids = list(self.users) if user_ids is None else [i for i in user_ids if i in self.users]
        count = 0
        for uid in ids:
            u = self.users[uid]
            alive = [d for d, (entry, _) in u.deliveries.items() if not entry.deleted]
            for dest in alive:
                del u.deliveries[dest]
            count += len(alive)
            if not u.gone:
                u.row_hash = None
                u.dirty = True
                u.dirty_since = u.dirty_since or utcnow()
        return count


class MemoryCursors:
    """:class:`syncer.state.Cursors` in memory."""

    def __init__(self) -> None:
        self.positions: dict[str, str] = {}
        self.meta: dict[str, str] = {}

    def get(self, name: str) -> str | None:
        return self.positions.get(name)

    def set(self, name: str, value: str | None, now: dt.datetime) -> None:
        if value is None:
            self.positions.pop(name, None)
        else:
            self.positions[name] = value

    def get_meta(self, name: str) -> str | None:
        return self.meta.get(name)

    def set_meta(self, name: str, value: str) -> None:
        self.meta[name] = value


class MemoryPassLog:
    """:class:`syncer.state.PassLog` in memory."""

    def __init__(self) -> None:
        self.passes: list[PassRecord] = []   # oldest first
        self._last_pass_id = 0

    def start(self, kind: PassKind, mode: str, now: dt.datetime, instance: str | None) -> int:
        self._last_pass_id += 1
        record = PassRecord(self._last_pass_id, now, None, kind, mode, PassOutcome.RUNNING,
                            PassCounts(), None, instance)
        self.passes.append(record)
        return record.id

    def finish(self, pass_id: int, outcome: PassOutcome, counts: PassCounts,
               message: str | None, now: dt.datetime, kind: PassKind | None = None) -> None:
        for i, old in enumerate(self.passes):
            if old.id == pass_id:
                kept = PassCounts.from_json(counts.to_json())   # a copy, as the SQL store keeps
                self.passes[i] = replace(old, finished_at=now, outcome=outcome, counts=kept,
                                         message=message, kind=kind or old.kind)

    def recent(self, limit: int) -> list[PassRecord]:
        return list(reversed(self.passes))[:limit]

    def prune(self, keep: int, batch: int) -> int:
        gone = min(batch, max(0, len(self.passes) - keep))
        del self.passes[:gone]
        return gone


class MemoryHistory:
    """:class:`syncer.state.History` in memory."""

    def __init__(self) -> None:
        self.entries: list[HistoryEntry] = []   # oldest first
        self._last_id = 0

    def append(self, entries: Sequence[HistoryEntry]) -> None:
        for entry in entries:
            self._last_id += 1
            self.entries.append(replace(entry, id=self._last_id))

    def timeline(self, user_id: str, destination: str | None = None) -> list[HistoryEntry]:
        return [e for e in self.entries if e.user_id == user_id
                and (destination is None or e.destination == destination)]

    def between(self, since: dt.datetime | None, until: dt.datetime | None, *,
                plain_updates: bool = True) -> Iterator[HistoryEntry]:
        return iter([e for e in self.entries
                     if (since is None or e.acked_at >= since)
                     and (until is None or e.acked_at < until)
                     and (plain_updates or e.operation is not Operation.UPDATE or e.consents)])

    def prune(self, before: dt.datetime, batch: int) -> int:
        old = sorted((e.acked_at, i) for i, e in enumerate(self.entries) if e.acked_at < before)
        gone = {i for _, i in old[:batch]}
        self.entries = [e for i, e in enumerate(self.entries) if i not in gone]
        return len(gone)


class MemoryRequests:
    """:class:`syncer.state.Requests` in memory."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str | None]] = []

    def add(self, kind: str, user_ids: Sequence[str] | None) -> int:
        ids: list[str | None] = list(user_ids) if user_ids is not None else [None]
        self.entries += [(kind, uid) for uid in ids]
        return len(ids)

    def take(self) -> list[tuple[str, str | None]]:
        taken, self.entries = self.entries, []
        return taken


class MemoryStateStore:
    """:class:`syncer.state.StateStore` in memory: the same contract as the SQL store."""

    def __init__(self) -> None:
        self.history = MemoryHistory()
        self.ledger = MemoryLedger(self.history)
        self.passes = MemoryPassLog()
        self.requests = MemoryRequests()
        self.cursors = MemoryCursors()

    def close(self) -> None:
        pass
