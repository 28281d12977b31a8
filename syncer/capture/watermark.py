"""Watermark capture: the rows whose ``watermark_column`` moved since the last pass.

Each pass reads ``watermark_column >= cursor - lookback_seconds`` (one index range scan) and keeps
the rows whose hash differs from the state's; the overlap costs database reads, never API calls.

The classic bug is a transaction that starts first, stays open, and commits after later
transactions were already read: its rows carry an old timestamp, below the cursor. On PostgreSQL the
cursor is therefore never moved past the start of the oldest transaction still open in the
database (``pg_stat_activity.xact_start``): every row such a transaction writes is stamped at or
after its start (``now()``, ``clock_timestamp()`` and the application's clock all are), so it is
read once it commits, however long it stays open. Seeing other roles' sessions needs the
``pg_read_all_stats`` role; without it only the reader's own sessions hold the cursor and the
lookback is the only guarantee, which ``syncer status`` says. On MySQL/MariaDB and SQLite the
lookback is the guarantee: a transaction that commits more than ``lookback_seconds`` after it
stamped its rows can be missed until the next reconcile.

The first pass (no cursor yet) is a full snapshot; the cursor then starts where that snapshot
started.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from sqlalchemy import types as satypes

from syncer.capture import Candidates, CaptureContext, pending_keys, sort_keys, sort_rows
from syncer.capture.snapshot import SnapshotCapture
from syncer.capture.watermark_cursor import (
    Cursor,
    before,
    blind_spots,
    comparable,
    is_date,
    shift,
)
from syncer.clock import utcnow
from syncer.config import CaptureConfig
from syncer.errors import ConfigError
from syncer.live import LiveRound
from syncer.model import RawRow
from syncer.source import Source

log = structlog.get_logger("syncer.capture.watermark")

CURSOR = "watermark"



def db_clock(source: Source) -> dt.datetime | None:
    """The database's own 'now', as its timestamp columns are usually written (SQLite's
    CURRENT_TIMESTAMP is UTC; MySQL's NOW() and PostgreSQL's localtimestamp are in the
    session's time zone)."""
    sql = {"sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
           "postgresql": "SELECT localtimestamp",
           "mysql": "SELECT NOW(6)", "mariadb": "SELECT NOW(6)"}.get(source.dialect)
    return comparable(source.scalar(sql)) if sql else None


# Rows stamped this far ahead of the database's clock are read, but never move the cursor: one
# row written by a machine whose clock runs an hour ahead must not make every later change
# look old.
FUTURE_TOLERANCE = dt.timedelta(seconds=1)


# ----------------------------------------------------------------------------- the horizon


@dataclass(frozen=True, slots=True)
class Horizon:
    """PostgreSQL: the start of the oldest open transaction (or now), as the column compares."""

    value: Any
    now: Any
    oldest: dict[str, Any] | None
    sees_all_sessions: bool


def pg_horizon(source: Source, aware: bool) -> Horizon:
    rows = source.run("""
        SELECT now(), localtimestamp,
               a.xact_start, a.xact_start AT TIME ZONE current_setting('TimeZone'),
               a.pid, a.usename, a.application_name, a.state,
               extract(epoch FROM now() - a.xact_start),
               (SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'MEMBER')
                  FROM pg_roles WHERE rolname = current_user)
          FROM (SELECT 1) AS one
          LEFT JOIN LATERAL (
                SELECT * FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()
                   AND xact_start IS NOT NULL AND backend_type = 'client backend'
                 ORDER BY xact_start LIMIT 1) AS a ON true""")
    (now, local_now, start, local_start, pid, user, app, state, age, sees_all) = rows[0]
    now_value = now if aware else local_now
    if start is None:
        return Horizon(now_value, now_value, None, bool(sees_all))
    oldest = {"pid": pid, "user": user, "application": app, "state": state,
              "open_seconds": round(float(age), 1), "since": str(start)}
    value = start if aware else local_start
    return Horizon(min(value, now_value), now_value, oldest, bool(sees_all))


# ----------------------------------------------------------------------------- capture


class WatermarkCapture:
    name = "watermark"

    def __init__(self, config: CaptureConfig, notes: Sequence[str] = (),
                 cursor: str = CURSOR) -> None:
        if not config.watermark_column:
            raise ConfigError('[capture] mode = "watermark" needs `watermark_column`')
        self.column = config.watermark_column
        self.lookback = config.lookback_seconds
        self.notes = list(notes)   # what this mode cannot see (blind_spots), for plan/status
        self.cursor = cursor       # its name in the state's cursors

    def _aware(self, ctx: CaptureContext, sample: object) -> bool:
        if isinstance(sample, dt.datetime):
            return sample.tzinfo is not None
        col_type = ctx.source.column_types.get(self.column)
        return bool(getattr(col_type, "timezone", False))

    def _max(self, ctx: CaptureContext) -> object:
        col = ctx.source.q(self.column)
        return ctx.source.scalar(f"SELECT MAX({col}) FROM {ctx.source.relation}")

    def _horizon_applies(self, ctx: CaptureContext, sample: object) -> bool:
        """PostgreSQL with a timestamp column: the cursor is held below the oldest open
        transaction. The column's type decides (a DATE or text column compares as such, even in
        an empty table); a query source has no types, so its values do."""
        if ctx.source.dialect != "postgresql":
            return False
        col_type = ctx.source.column_types.get(self.column)
        if col_type is not None:
            return isinstance(col_type, satypes.DateTime)
        return isinstance(sample, dt.datetime)

    def start(self, ctx: CaptureContext) -> tuple[object, Horizon | None]:
        """Where to start: the newest value in the table, held below any open transaction
        (PostgreSQL) and never ahead of the database's clock."""
        newest = self._max(ctx)
        if newest is not None and not isinstance(newest, str) and comparable(newest) is None:
            newest = None   # e.g. 'infinity': no time to start from
        horizon = None
        if self._horizon_applies(ctx, newest):
            horizon = pg_horizon(ctx.source, self._aware(ctx, newest))
            if newest is None or before(horizon.value, newest):
                return horizon.value, horizon
            return newest, horizon
        clock = db_clock(ctx.source)
        moment = comparable(newest)
        if clock is not None and moment is not None and moment > clock + FUTURE_TOLERANCE:
            newest = shift(newest, (moment - clock).total_seconds())
        return newest, horizon

    def collect(self, ctx: CaptureContext) -> Candidates:
        stored = ctx.state.cursors.get(self.cursor)
        if stored is None:
            start, _ = self.start(ctx)
            out = SnapshotCapture().collect(ctx)
            value = Cursor(start, time.time(), False).encode()
            out.commit = lambda: ctx.state.cursors.set(self.cursor, value, utcnow())
            out.position = {"watermark": "first pass: full snapshot", "starts_at": str(start)}
            out.position.update(self._notes())
            out.live = WatermarkLive(self, start)
            return out
        out = Candidates()
        seen: set[str] = set()
        sort_keys(ctx, pending_keys(ctx, out), out, seen)
        rows, finish = self.read(ctx, Cursor.decode(stored), out.committed)
        sort_rows(ctx, rows, out, seen)
        value, out.position = finish()
        out.position.update(self._notes())
        out.commit = lambda: ctx.state.cursors.set(self.cursor, value, utcnow())
        out.live = WatermarkLive(self, Cursor.decode(value).value)
        return out

    def _notes(self) -> dict[str, object]:
        return {"blind_spots": self.notes} if self.notes else {}

    def read(self, ctx: CaptureContext, cursor: Cursor,
             committed: dict[object, dt.datetime] | None = None,
             ) -> tuple[Iterator[RawRow], Callable[[], tuple[str, dict[str, object]]]]:
        """The rows of the read window after ``cursor`` (from ``ctx.source``), and, once they
        have all been read, the next cursor (encoded) and the position to report. Each row's
        watermark goes into ``committed`` (the audit trail's commit time)."""
        horizon = None
        if self._horizon_applies(ctx, cursor.value):
            horizon = pg_horizon(ctx.source, self._aware(ctx, cursor.value))
        low, exclusive = cursor.low(self.lookback)
        newest: list[object] = [cursor.value]
        clock = None if horizon is not None else db_clock(ctx.source)
        limit = None if clock is None else clock + FUTURE_TOLERANCE
        ahead = [0]
        layouts: set[str] = set()

        def tracked() -> Iterator[RawRow]:
            for row, value in ctx.source.since(self.column, low, exclusive=exclusive,
                                               also=blind_spots(low), unset=True):
                moment = comparable(value)
                if isinstance(value, str) and len(value) > 10:
                    layouts.add(value[10])
                if moment is not None:
                    if committed is not None:
                        committed[row.key] = moment
                    if limit is not None and moment > limit:
                        ahead[0] += 1
                    elif newest[0] is None or before(newest[0], value):
                        newest[0] = value
                yield row

        def finish() -> tuple[str, dict[str, object]]:
            value = self.advance(cursor, newest[0], horizon, time.time()).encode()
            position = self._describe(cursor, low, horizon)
            if ahead[0]:
                position["stamped_in_the_future"] = ahead[0]
                log.warning("watermark.future_rows", rows=ahead[0],
                            hint="rows stamped ahead of the database's clock are read at every "
                                 "pass until their time comes; check the writers' clocks")
            if len(layouts) > 1:
                position["mixed_layouts"] = sorted(layouts)
            return value, position

        return tracked(), finish

    def advance(self, cursor: Cursor, newest: object, horizon: Horizon | None,
                wall: float) -> Cursor:
        """The next cursor.

        PostgreSQL: the horizon itself (the start of the oldest open transaction, or the
        database's now): no row can still appear stamped before it, so rows stamped long ago
        (a bulk update) leave the read window once the lookback has passed.

        Elsewhere: the newest value read (not counting rows stamped ahead of the database's
        clock). Once it has stayed the newest for ``lookback_seconds`` of our own clock, every
        transaction that stamped a row at or before it and commits within the lookback has
        committed and been read, so later passes read only newer rows; a date never settles
        that way (rows stamped later that day carry the same value).
        """
        if horizon is not None:
            return Cursor(horizon.value, wall, False)
        if newest is not None and (cursor.value is None or before(cursor.value, newest)):
            return Cursor(newest, wall, False)
        if not cursor.exclusive and wall - cursor.seen >= self.lookback \
                and not is_date(cursor.value):
            return Cursor(cursor.value, cursor.seen, True)
        return cursor

    def _describe(self, cursor: Cursor, low: object, horizon: Horizon | None
                  ) -> dict[str, object]:
        position: dict[str, object] = {
            "watermark": str(cursor.value),
            "reads_from": ("after " if cursor.exclusive else "") + str(low),
            "lookback_seconds": self.lookback}
        if horizon is not None:
            position["horizon"] = str(horizon.value)
            if horizon.oldest is not None:
                position["held_by_open_transaction"] = horizon.oldest
            if not horizon.sees_all_sessions:
                position["horizon_note"] = ("sees only this role's sessions: GRANT "
                                            "pg_read_all_stats to the reader so a long "
                                            "transaction of another role cannot be missed")
        return position

    def starts_with_snapshot(self, ctx: CaptureContext) -> bool:
        return ctx.state.cursors.get(self.cursor) is None

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        stored = ctx.state.cursors.get(self.cursor)
        if stored is None:
            return {"watermark": "none yet (the first pass is a full snapshot)", **self._notes()}
        cursor = Cursor.decode(stored)
        horizon = None
        if self._horizon_applies(ctx, cursor.value):
            horizon = pg_horizon(ctx.source, self._aware(ctx, cursor.value))
        position = self._describe(cursor, cursor.low(self.lookback)[0], horizon)
        position["index"] = index_used(ctx.source, self.column)
        position.update(self._warnings(ctx, cursor, horizon))
        position.update(self._notes())
        return position

    def _warnings(self, ctx: CaptureContext, cursor: Cursor,
                  horizon: Horizon | None) -> dict[str, object]:
        """What an operator should know about the column's values: rows an incremental pass
        reads every time (no watermark, or stamped in the future) and a cursor ahead of the
        database's clock."""
        source, col = ctx.source, ctx.source.q(self.column)
        out: dict[str, object] = {}
        unset = source.scalar(f"SELECT count(*) FROM {source.relation} WHERE {col} IS NULL")
        if unset:
            out["rows_without_watermark"] = (
                f"{int(unset)} rows have no {self.column}: every pass reads them again; give "
                "them a value (or use mode = \"outbox\")")
        clock = None if horizon is not None else db_clock(source)
        moment = comparable(cursor.value)
        if clock is not None and moment is not None and moment > clock + dt.timedelta(minutes=1):
            out["cursor_ahead_of_clock"] = (
                f"the cursor ({cursor.value}) stands ahead of the database's clock ({clock}): "
                "rows stamped before it are not read until then; `syncer once --reconcile` "
                "catches them, and the cursor no longer moves past the clock")
        if clock is not None:
            ahead = source.scalar(f"SELECT count(*) FROM {source.relation} WHERE {col} > :now",
                                  {"now": _like(cursor.value, clock)})
            if ahead:
                out["stamped_in_the_future"] = (
                    f"{int(ahead)} rows have {self.column} after the database's clock ({clock}): "
                    "they are read at every pass until then; check the writers' clocks")
        return out


class WatermarkLive:
    """The rows whose watermark moved while a pass runs, for the live lane
    (:mod:`syncer.live`): each look reads the rows stamped after the newest value seen so far
    (the pass's own capture first), and keeps those whose hash differs from the state's. No
    lookback here: a row committed late with an older stamp is the next pass's (its cursor
    keeps the lookback), and the pass's own cursor is not moved."""

    def __init__(self, capture: WatermarkCapture, start: object) -> None:
        self.capture = capture
        self.newest = start

    def read(self, ctx: CaptureContext) -> LiveRound | None:
        if self.newest is None:
            return None
        low = self.newest
        clock = db_clock(ctx.source)
        limit = None if clock is None else clock + FUTURE_TOLERANCE
        out = Candidates()

        def tracked() -> Any:
            for row, value in ctx.source.since(self.capture.column, low,
                                               exclusive=not is_date(low)):
                moment = comparable(value)
                if moment is not None:
                    out.committed[row.key] = moment   # the audit trail's commit time
                    if (limit is None or moment <= limit) and before(self.newest, value):
                        self.newest = value
                yield row

        sort_rows(ctx, tracked(), out, set())
        keys = [*out.deleted, *out.changed]
        return LiveRound(keys, committed=out.committed) if keys else None


def _like(sample: object, moment: dt.datetime) -> object:
    """``moment`` in the form of ``sample`` (text in its layout, a date, a time)."""
    if isinstance(sample, str):
        return moment.isoformat(sep=sample[10] if len(sample) > 10 else " ")
    if is_date(sample):
        return moment.date()
    return moment


def index_used(source: Source, column: str) -> str:
    """Whether the database answers ``column >= x`` from an index (EXPLAIN), in words; the
    advice names the table (a query has no index of its own)."""
    col = source.q(column)
    if source.config.table is None:
        return ("unknown for a query: declare the tables it reads as [[source.tables]] and "
                "put watermark_column on them, so each table's index is checked and named")
    probe = f"SELECT {source.pk} FROM {source.relation} WHERE {col} >= :low"
    try:
        sample = source.scalar(f"SELECT MAX({col}) FROM {source.relation}")
        if sample is None:
            return "unknown (empty table)"
        if source.dialect == "postgresql":
            plan = "\n".join(str(r[0]) for r in source.run("EXPLAIN " + probe, {"low": sample}))
            full = "Seq Scan" in plan
        elif source.dialect in ("mysql", "mariadb"):
            rows = source.run("EXPLAIN " + probe, {"low": sample})
            full = any(str(r[3]).upper() == "ALL" for r in rows)
        else:
            plan = " ".join(str(r[-1]) for r in source.run("EXPLAIN QUERY PLAN " + probe,
                                                           {"low": sample}))
            full = "SEARCH" not in plan.upper()
    except Exception as exc:
        return f"unknown ({type(exc).__name__})"
    if full:
        return (f"NOT used: every pass scans the whole table; "
                f"CREATE INDEX ON {source.relation} ({col})")
    return "used"

