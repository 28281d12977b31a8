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
    claim,
    names,
    outbox_columns,
    schema_of,
    watched_drift,
)
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark_cursor import comparable
from syncer.clock import utcnow
from syncer.config import CaptureConfig, SourceConfig
from syncer.errors import ConfigError, SourceError
from syncer.source import Source
from syncer.state import state_id

log = structlog.get_logger("syncer.capture.outbox")

BATCH = 50_000


# ----------------------------------------------------------------------------- capture


class OutboxCapture:
    name = "outbox"

    def __init__(self, capture: CaptureConfig, source: SourceConfig) -> None:
        self.capture = capture
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
            # meanwhile, and the next pass handles it.
            out = SnapshotCapture().collect(ctx)
            out.commit = lambda: ctx.state.cursors.set(CURSOR, "snapshot taken", utcnow())
            out.position = {"outbox": "first pass: full snapshot"}
            return out
        upgraded = self._upgraded(ctx, n)
        extra = "op, txn" if upgraded else "'U', NULL"
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
        note_commits(ctx, rows, out)
        seen: set[str] = set()
        sort_keys(ctx, pending_keys(ctx, out), out, seen)
        sort_keys(ctx, keys, out, seen)
        weigh_recreations(ctx, out)
        out.scanned = len(rows)
        out.more = out.more or len(rows) == BATCH
        out.position = {"outbox_rows": len(rows), "distinct_users": len(keys)}

        def consume() -> None:
            claim(ctx.source, n, state_id(ctx.state.cursors))
            for i in range(0, len(ids), 1000):
                part = ", ".join(str(int(x)) for x in ids[i:i + 1000])
                ctx.source.run(f"DELETE FROM {n.outbox} WHERE id IN ({part})")

        out.commit = consume if ids else None
        return out

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
        drift = watched_drift(ctx.source, n)
        if drift:
            position["triggers"] = (f"do not watch {', '.join(drift)}: run `syncer outbox "
                                    "install` again")
        return position


def note_commits(ctx: CaptureContext, rows: Sequence[Any], out: Candidates) -> None:
    """The audit trail's commit time of each key: its oldest outbox row (rows are (id, key,
    op, txn, created_at))."""
    for row in rows:
        moment = comparable(row[4])
        key = ctx.source.typed_key(row[1], row[1])
        if moment is not None and key not in out.committed:
            out.committed[key] = moment


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
