"""Outbox capture: triggers on the users table (:mod:`syncer.capture.outbox_ddl`) leave the key of
every inserted, updated (in a mapped column) or deleted row in an outbox table; a pass takes the
keys, diffs and delivers those users, records the results, and then removes exactly the outbox
rows it handled.

Out-of-order commits are covered by construction: nothing is gated on an id high-water mark (ids
commit out of order), a row that was not yet visible is simply handled by a later pass. Hard
deletes arrive as outbox rows. The daemon's :class:`OutboxWatcher` looks at the outbox's newest
id a few times a second and starts a pass within a fraction of a second of a commit.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from syncer import normalize
from syncer.capture import (
    Candidates,
    CaptureContext,
    pending_keys,
    sort_keys,
    weigh_recreations,
)
from syncer.capture.outbox_ddl import (
    CURSOR,
    OutboxNames,
    all_names,
    claim,
    names,
    outbox_columns,
    schema_of,
)
from syncer.capture.outbox_tables import trigger_problems
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark_cursor import comparable
from syncer.clock import utcnow
from syncer.config import CaptureConfig, SourceConfig
from syncer.errors import ConfigError, SourceError
from syncer.live import LiveRound
from syncer.source import Source
from syncer.state import state_id

log = structlog.get_logger("syncer.capture.outbox")

BATCH = 50_000


# ----------------------------------------------------------------------------- capture


class OutboxCapture:
    name = "outbox"

    def __init__(self, capture: CaptureConfig, source: SourceConfig,
                 notes: Sequence[str] = ()) -> None:
        self.capture = capture
        self.notes = list(notes)   # what this mode cannot see (blind_spots), for plan/status
        self.source_config = source
        self._names: OutboxNames | None = None
        self._marked: bool | None = None

    def _n(self, ctx: CaptureContext) -> OutboxNames:
        if self._names is None:
            self._names = names(ctx.source, self.capture,
                                schema_of(ctx.source, self.source_config), ctx.mapping)
        return self._names

    def check(self, ctx: CaptureContext) -> OutboxNames:
        n = self._n(ctx)
        try:
            ctx.source.run(f"SELECT 1 FROM {n.outbox} WHERE 1 = 0")
        except SourceError:
            raise ConfigError(
                f"the outbox table {n.outbox_bare} does not exist in the source database: run "
                "`syncer outbox install` (or give a DBA the output of `syncer outbox sql`)"
            ) from None
        return n

    def collect(self, ctx: CaptureContext) -> Candidates:
        n = self.check(ctx)
        if ctx.state.cursors.get(CURSOR) is None:
            # Everything before now comes from a snapshot; the outbox already keeps what happens
            # meanwhile: the live lane sends it while the snapshot is sent, the next pass
            # handles what is left.
            floor = self._newest(ctx, n)
            out = SnapshotCapture().collect(ctx)
            out.commit = lambda: ctx.state.cursors.set(CURSOR, "snapshot taken", utcnow())
            out.position = {"outbox": "first pass: full snapshot"}
            out.live = OutboxLive(n, floor, self._upgraded(ctx, n))
            return out
        upgraded = self._upgraded(ctx, n)
        extra = _EXTRA[upgraded]
        rows = ctx.source.run(f"SELECT id, user_key, {extra}, created_at FROM {n.outbox} "
                              f"ORDER BY id LIMIT {BATCH}")
        ids = [r[0] for r in rows]
        out = Candidates()
        keys: list[object] = []
        for text in dict.fromkeys(r[1] for r in rows):
            key = ctx.source.typed_key(text, text)
            if normalize.user_id_or_none(key) is None:   # no user can be named by it
                out.invalid.append((repr(text)[:64], "the outbox holds a key that cannot be a "
                                                     "user id (not text, or empty)"))
            else:
                keys.append(key)
        if ctx.mapping.created_column is None:   # else that column says who holds a key
            out.recreated = {ctx.source.typed_key(k, k)
                             for k in recreated_keys([r[:4] for r in rows])}
        note_commits(ctx, rows, out.committed)
        seen: set[str] = set()
        sort_keys(ctx, pending_keys(ctx, out), out, seen)
        sort_keys(ctx, keys, out, seen)
        weigh_recreations(ctx, out)
        out.scanned = len(rows)
        out.more = out.more or len(rows) == BATCH
        out.position = {"outbox_rows": len(rows), "distinct_users": len(keys)}
        if self.notes:
            out.position["blind_spots"] = self.notes

        out.commit = (lambda: consume(ctx, n, ids)) if ids else None
        out.live = OutboxLive(n, max(ids) if ids else self._newest(ctx, n), upgraded)
        return out

    def _newest(self, ctx: CaptureContext, n: OutboxNames) -> int:
        newest = ctx.source.scalar(f"SELECT max(id) FROM {n.outbox}")
        return 0 if newest is None else int(newest)

    def watcher(self, ctx: CaptureContext, on_change: Callable[[], None],
                stop: threading.Event, interval: float) -> OutboxWatcher:
        """A watcher of this outbox on a connection of its own (see :class:`OutboxWatcher`)."""
        source = Source(ctx.source.config, self.capture, ctx.source.columns, ctx.source.seed)
        return OutboxWatcher(source, self._n(ctx).outbox, on_change, stop, interval)

    def _upgraded(self, ctx: CaptureContext, n: OutboxNames) -> bool:
        """Whether the outbox has the columns of this version (``op``, ``txn``, ``urgent``): an
        outbox installed by an earlier one has not, until ``syncer outbox install`` runs again.
        Asked once per capture; a database error fails the pass (it never reads as "no")."""
        if self._marked is None:
            columns = outbox_columns(ctx.source, n)
            self._marked = columns is not None and {"op", "txn", "urgent"} <= columns
        return self._marked

    def starts_with_snapshot(self, ctx: CaptureContext) -> bool:
        return ctx.state.cursors.get(CURSOR) is None

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        n = self.check(ctx)
        rows = ctx.source.run(f"SELECT count(*), min(created_at) FROM {n.outbox}")
        depth, oldest = rows[0]
        position: dict[str, object] = {"outbox_depth": int(depth),
                                       "oldest": None if oldest is None else str(oldest)}
        if not self._upgraded(ctx, n):
            position["outbox_upgrade"] = ("the outbox was installed by an earlier version: run "
                                          "`syncer outbox install` again so that a key deleted "
                                          "and re-created between passes is seen, and urgent "
                                          "changes go first")
        position["triggers"] = self.trigger_health(ctx)
        if self.notes:
            position["blind_spots"] = self.notes
        return position

    def trigger_health(self, ctx: CaptureContext) -> str:
        """``healthy on <tables>``, or what is missing on which table and the fix."""
        every = all_names(ctx.source, self.capture, schema_of(ctx.source, self.source_config),
                          ctx.mapping)
        problems = [p for n in every for p in trigger_problems(ctx.source, n)]
        if problems:
            return "; ".join(problems) + ": run `syncer outbox install` again"
        return "healthy on " + ", ".join(n.table_bare for n in every)


_EXTRA = {True: "op, txn", False: "'U', NULL"}   # an outbox from an earlier version has neither

# Outbox rows the live lane takes in one round, at most.
LIVE_ROWS = 2000


def consume(ctx: CaptureContext, n: OutboxNames, ids: Sequence[int]) -> None:
    """Remove exactly these outbox rows (their users are recorded), as the state that claims
    the outbox."""
    claim(ctx.source, n, state_id(ctx.state.cursors))
    for i in range(0, len(ids), 1000):
        part = ", ".join(str(int(x)) for x in ids[i:i + 1000])
        ctx.source.run(f"DELETE FROM {n.outbox} WHERE id IN ({part})")


class OutboxLive:
    """The outbox rows committed while a pass runs (ids above what the pass read): taken a
    round at a time by the live lane (:mod:`syncer.live`), removed once recorded. A row
    committed out of order below the floor is left for the next pass, never lost."""

    def __init__(self, n: OutboxNames, floor: int, upgraded: bool) -> None:
        self.n = n
        self.floor = floor
        self.upgraded = upgraded

    def read(self, ctx: CaptureContext) -> LiveRound | None:
        rows = ctx.source.run(f"SELECT id, user_key, {_EXTRA[self.upgraded]}, created_at FROM "
                              f"{self.n.outbox} WHERE id > :floor ORDER BY id LIMIT {LIVE_ROWS}",
                              {"floor": self.floor})
        if not rows:
            return None
        self.floor = max(self.floor, int(rows[-1][0]))
        # Keys deleted and re-created, or that name no user, are left to the next pass.
        skip = (recreated_keys([r[:4] for r in rows]) if ctx.mapping.created_column is None
                else set())
        keys: dict[object, None] = {}
        ids: list[int] = []
        for row in rows:
            text = row[1]
            if text is None or text in skip:
                continue
            key = ctx.source.typed_key(text, text)
            if normalize.user_id_or_none(key) is None:
                continue
            keys[key] = None
            ids.append(int(row[0]))
        found = LiveRound(list(keys), (lambda: consume(ctx, self.n, ids)) if ids else None)
        note_commits(ctx, rows, found.committed)
        return found


def note_commits(ctx: CaptureContext, rows: Sequence[Any],
                 committed: dict[object, dt.datetime]) -> None:
    """The audit trail's commit time of each key: its oldest outbox row (rows are (id, key,
    op, txn, created_at))."""
    for row in rows:
        moment = comparable(row[4])
        key = ctx.source.typed_key(row[1], row[1])
        if moment is not None and key not in committed:
            committed[key] = moment


def recreated_keys(rows: Sequence[Any]) -> set[str]:
    """Keys deleted and then inserted again in another transaction: another person holds them
    now. A deletion and an insertion in one transaction (MySQL's ``REPLACE``, an ORM that
    deletes and re-inserts on save) is the same person. Rows are (id, key, op, txn), by id."""
    deleted_in: dict[str, set[object]] = {}
    out: set[str] = set()
    for _id, key, op, txn in rows:
        if op == "D":
            deleted_in.setdefault(key, set()).add(txn)
        elif op == "I" and key in deleted_in:
            txns = deleted_in[key]
            if txn is None or None in txns or txns != {txn}:
                out.add(key)
    return out


# ----------------------------------------------------------------------------- wake-ups


class OutboxWatcher(threading.Thread):
    """Looks at the outbox's newest id every ``interval`` seconds, on a connection of its own,
    and calls ``on_change`` when it moved (new rows, or rows left behind by the last pass): the
    daemon starts a pass within a fraction of a second of a commit, on any database, without the
    trigger paying for a NOTIFY on every row. One index lookup per look; a burst of commits
    between two looks makes one wake-up, so it shares requests. Reconnects with backoff."""

    def __init__(self, source: Source, outbox: str, on_change: Callable[[], None],
                 stop: threading.Event, interval: float) -> None:
        super().__init__(name="syncer-outbox-watch", daemon=True)
        self.source = source
        self.query = f"SELECT max(id) FROM {outbox}"
        self.on_change = on_change
        self.stop_event = stop
        self.interval = interval
        self.watching = threading.Event()
        self.changes = 0

    def run(self) -> None:
        last: object = None
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                newest = self.source.scalar(self.query)
            except SourceError as exc:
                if self.watching.is_set() or backoff == 1.0:
                    log.warning("outbox.watch_failed", error=str(exc)[:200], retry_in=backoff)
                self.watching.clear()
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if not self.watching.is_set():
                self.watching.set()
                log.info("outbox.watching", every_seconds=self.interval)
                backoff = 1.0
            if newest is not None and newest != last:
                self.changes += 1
                self.on_change()
            last = newest
            self.stop_event.wait(self.interval)
        self.source.close()
