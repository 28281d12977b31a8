"""Watermark capture over several tables: a ``[source] query`` whose ``[[source.tables]]`` name a
``watermark_column`` each (``auth_user.last_login`` aside, ``profile.updated_at``).

A change in any of them counts: each table is read on its own, exactly as a one-table watermark
reads its table (:meth:`WatermarkCapture.read`: the lookback, the PostgreSQL horizon, rows
stamped in the future), with a cursor of its own in the state (``watermark:<table>``). The keys
found (the table's ``key`` column) are the union of candidates, read through the query: a key
the query no longer gives is a deletion only by the usual rules (a user syncer saw alive).
A table without a watermark column is not looked at between reconciles, which ``plan`` and
``status`` say.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from syncer.capture import Candidates, CaptureContext, pending_keys, sort_keys
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark import WatermarkCapture, index_used
from syncer.capture.watermark_cursor import Cursor
from syncer.clock import utcnow
from syncer.config import CaptureConfig, SourceConfig, SourceTable
from syncer.source import Source


def cursor_name(table: str) -> str:
    """The table's cursor in the state's cursors (one per table, by name)."""
    return f"watermark:{table}"[:64]


class TablesWatermarkCapture:
    name = "watermark"

    def __init__(self, capture: CaptureConfig, source: SourceConfig,
                 notes: Sequence[str] = ()) -> None:
        self.capture = capture
        self.notes = list(notes)   # what this mode cannot see (blind_spots), for plan/status
        self.entries: list[SourceTable] = [t for t in source.tables if t.watermark_column]
        self._sources: dict[str, Source] = {}

    def _table(self, ctx: CaptureContext, entry: SourceTable) -> tuple[CaptureContext,
                                                                       WatermarkCapture]:
        """A context reading this table alone (its key and watermark column, on the source's
        engine), and the one-table watermark capture for it."""
        column = str(entry.watermark_column)
        capture = self.capture.model_copy(update={"mode": "watermark", "watermark_column": column,
                                                  "soft_delete_column": None,
                                                  "created_column": None})
        source = self._sources.get(entry.name)
        if source is None:
            config = SourceConfig.model_validate({"url": ctx.source.config.url,
                                                  "table": entry.name, "primary_key": entry.key})
            owners = {entry.key: f"[[source.tables]] {entry.name} key",
                      column: f"[[source.tables]] {entry.name} watermark_column"}
            source = Source(config, capture, [], ctx.source.seed, engine=ctx.source.engine,
                            owners=owners)
            source.check()
            self._sources[entry.name] = source
        return (CaptureContext(source, ctx.state, ctx.mapping),
                WatermarkCapture(capture, cursor=cursor_name(entry.name)))

    def collect(self, ctx: CaptureContext) -> Candidates:
        stored = {e.name: ctx.state.cursors.get(cursor_name(e.name)) for e in self.entries}
        if any(v is None for v in stored.values()):
            return self._snapshot(ctx)
        out = Candidates()
        seen: set[str] = set()
        sort_keys(ctx, pending_keys(ctx, out), out, seen)
        values: dict[str, str] = {}
        position: dict[str, object] = {}
        for entry in self.entries:
            tctx, capture = self._table(ctx, entry)
            rows, finish = capture.read(tctx, Cursor.decode(str(stored[entry.name])),
                                        out.committed)
            keys = list(dict.fromkeys(row.key for row in rows if row.key is not None))
            ctx.progress()
            sort_keys(ctx, keys, out, seen)
            values[entry.name], position[entry.name] = finish()

        def commit() -> None:
            for name, value in values.items():
                ctx.state.cursors.set(cursor_name(name), value, utcnow())

        out.commit = commit
        out.position = {"watermarks": position, **self._notes()}
        return out

    def _notes(self) -> dict[str, object]:
        return {"blind_spots": self.notes} if self.notes else {}

    def _snapshot(self, ctx: CaptureContext) -> Candidates:
        """The first pass (or one after a table was added): a full snapshot; each table's
        cursor starts where it stood when the snapshot began."""
        starts = {}
        for entry in self.entries:
            tctx, capture = self._table(ctx, entry)
            start, _ = capture.start(tctx)
            starts[entry.name] = (Cursor(start, time.time(), False).encode(), str(start))
        out = SnapshotCapture().collect(ctx)

        def commit() -> None:
            for name, (value, _) in starts.items():
                ctx.state.cursors.set(cursor_name(name), value, utcnow())

        out.commit = commit
        out.position = {"watermarks": "first pass: full snapshot",
                        "starts_at": {name: text for name, (_, text) in starts.items()},
                        **self._notes()}
        return out

    def starts_with_snapshot(self, ctx: CaptureContext) -> bool:
        return any(ctx.state.cursors.get(cursor_name(e.name)) is None for e in self.entries)

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        out: dict[str, object] = {}
        for entry in self.entries:
            tctx, capture = self._table(ctx, entry)
            out[entry.name] = {**capture.position(tctx),
                               "index": index_used(tctx.source, str(entry.watermark_column))}
        return {"watermarks": out, **self._notes()}
