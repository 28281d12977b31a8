"""The ledger of :mod:`syncer.state.sql`: per user, what the source gave and what each destination
acknowledged, with the quarantine and the field problems."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, Table, and_, case, delete, func, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from syncer.clock import utcnow
from syncer.errors import StateError
from syncer.model import BLUX, NACHOCODE, Delivered, KeyKind, Quarantine, UserState, UserWrite
from syncer.state import ProblemRow, QuarantineRow, ScanRow, StateCounts
from syncer.state import schema as t
from syncer.state.sql import SqlPart, brief
from syncer.state.sql_history import HISTORY_INSERT, history_rows

_IN_CHUNK = 500
# Every destination there is: lookups by user name them, so that the primary keys
# (destination, user_id) serve them as index searches instead of scans.
DESTINATIONS = (BLUX, NACHOCODE)


_U = t.users.c
# What the merge and the capture need of a user (ScanRow), in its field order.
_SCAN = (_U.user_id, _U.key_int, _U.row_hash, _U.gone, _U.dirty, _U.source_key, _U.identity)


# The two statements every pass writes most, prepared once (``?``: SQLite's placeholders;
# PostgreSQL's are put in place). A user still waiting keeps the time it began to wait.
_USERS_UPSERT = (
    "INSERT INTO syncer_users (user_id, key_int, source_key, row_hash, gone, dirty, first_seen, "
    "updated_at, dirty_since, seen_alive, identity, recreating) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
    "key_int = excluded.key_int, source_key = excluded.source_key, "
    "row_hash = excluded.row_hash, gone = excluded.gone, dirty = excluded.dirty, "
    "updated_at = excluded.updated_at, seen_alive = excluded.seen_alive, "
    "identity = excluded.identity, recreating = excluded.recreating, "
    "dirty_since = CASE WHEN excluded.dirty "
    "THEN coalesce(syncer_users.dirty_since, excluded.dirty_since) ELSE NULL END")
_DELIVERIES_UPSERT = (
    "INSERT INTO syncer_deliveries (destination, user_id, fingerprint, field_tags, deleted, "
    "delivered_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (destination, user_id) DO UPDATE SET "
    "fingerprint = excluded.fingerprint, field_tags = excluded.field_tags, "
    "deleted = excluded.deleted, delivered_at = excluded.delivered_at")


def _scan_row(r: Any) -> ScanRow:
    return ScanRow(r[0], r[1], r[2], bool(r[3]), bool(r[4]), r[5], r[6])


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class SqlLedger(SqlPart):
    """:class:`syncer.state.Ledger` on SQLAlchemy."""

    def known_users(self) -> int:
        return int(self._run("count", lambda c: c.execute(
            select(func.count()).select_from(t.users).where(~t.users.c.gone)).scalar_one()))

    def has_users(self) -> bool:
        return bool(self._run("count", lambda c: c.execute(
            select(t.users.c.user_id).limit(1)).first() is not None))

    def scan(self, kind: KeyKind) -> Iterator[ScanRow]:
        u = t.users.c
        cols = _SCAN
        if kind is KeyKind.INT:
            queries = [select(*cols).where(u.key_int.is_not(None)).order_by(u.key_int),
                       select(*cols).where(u.key_int.is_(None)).order_by(self._binary(u.user_id))]
        else:
            queries = [select(*cols).order_by(self._binary(u.user_id))]
        try:
            with self.engine.connect() as conn:
                for query in queries:
                    result = conn.execution_options(stream_results=True, yield_per=10_000) \
                        .execute(query)
                    for row in result:
                        yield _scan_row(row)
        except SQLAlchemyError as exc:
            raise StateError(f"state database (scan): {brief(exc)}") from exc

    def scan_range(self, low: int | None, high: int | None) -> Iterator[ScanRow]:
        u = t.users.c
        query = select(*_SCAN).where(u.key_int.is_not(None)).order_by(u.key_int)
        if low is not None:
            query = query.where(u.key_int >= low)
        if high is not None:
            query = query.where(u.key_int < high)
        rows = self._run("scan", lambda c: c.execute(query).all())
        return iter([_scan_row(r) for r in rows])

    def boundaries(self, every: int) -> list[int]:
        sql = text("SELECT key_int FROM (SELECT key_int, row_number() OVER (ORDER BY key_int) "
                   "AS rn FROM syncer_users WHERE key_int IS NOT NULL) AS numbered "
                   "WHERE rn % :every = 1 ORDER BY key_int")
        return [int(r[0]) for r in self._run("boundaries", lambda c: c.execute(
            sql, {"every": every}).all())]

    def block_sums(self, bounds: Sequence[int]) -> dict[int, tuple[int, int, int, int]]:
        settled = "(row_hash IS NOT NULL AND NOT dirty)"
        head = ("SELECT "
                f"SUM(CASE WHEN {settled} THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN {settled} THEN row_hash & 4294967295 ELSE 0 END), "
                f"SUM(CASE WHEN {settled} THEN (row_hash >> 32) & 4294967295 ELSE 0 END), "
                "SUM(CASE WHEN dirty OR (row_hash IS NULL AND NOT gone) THEN 1 ELSE 0 END) "
                "FROM syncer_users WHERE key_int IS NOT NULL")
        edges: list[int | None] = [None, *bounds, None]

        def get(conn: Connection) -> dict[int, tuple[int, int, int, int]]:
            out: dict[int, tuple[int, int, int, int]] = {}
            for i in range(len(edges) - 1):
                low, high = edges[i], edges[i + 1]
                where = ((f" AND key_int >= {int(low)}" if low is not None else "")
                         + (f" AND key_int < {int(high)}" if high is not None else ""))
                n, lo, hi, look = conn.execute(text(head + where)).one()
                if n or look:
                    out[i] = (int(n or 0), int(lo or 0), int(hi or 0), int(look or 0))
            return out

        return dict(self._run("blocks", get))

    def unkeyed_users(self) -> int:
        u = t.users.c
        return int(self._run("count", lambda c: c.execute(
            select(func.count()).select_from(t.users)
            .where(u.key_int.is_(None), ~u.gone)).scalar_one()))

    def lookup(self, user_ids: Sequence[str]) -> dict[str, UserState]:
        def get(conn: Connection) -> dict[str, UserState]:
            base: dict[str, dict[str, Any]] = {}
            for part in _chunks(list(user_ids)):
                for row in conn.execute(select(t.users).where(t.users.c.user_id.in_(part))):
                    base[row.user_id] = {"row_hash": row.row_hash, "gone": bool(row.gone),
                                         "dirty": bool(row.dirty), "deliveries": {},
                                         "quarantine": {}, "seen_alive": bool(row.seen_alive),
                                         "identity": row.identity,
                                         "recreating": bool(row.recreating)}
                for d in conn.execute(select(t.deliveries).where(
                        t.deliveries.c.destination.in_(DESTINATIONS),
                        t.deliveries.c.user_id.in_(part))):
                    entry = base.setdefault(d.user_id, _blank())
                    entry["deliveries"][d.destination] = Delivered(
                        d.fingerprint, d.field_tags, bool(d.deleted))
                for q in conn.execute(select(t.quarantine).where(
                        t.quarantine.c.destination.in_(DESTINATIONS),
                        t.quarantine.c.user_id.in_(part))):
                    entry = base.setdefault(q.user_id, _blank())
                    entry["quarantine"][q.destination] = Quarantine(
                        q.destination, q.fingerprint, q.reason, bool(q.transient),
                        q.last_attempt)
            return {uid: UserState(uid, **fields) for uid, fields in base.items()}

        return dict(self._run("lookup", get))

    def peek(self, user_ids: Sequence[str]) -> dict[str, ScanRow]:
        u = t.users.c

        def get(conn: Connection) -> dict[str, ScanRow]:
            out: dict[str, ScanRow] = {}
            for part in _chunks(list(user_ids)):
                for r in conn.execute(select(*_SCAN).where(u.user_id.in_(part))):
                    out[r[0]] = _scan_row(r)
            return out

        return dict(self._run("peek", get))

    def dirty_users(self, limit: int) -> list[ScanRow]:
        u = t.users.c
        query = select(*_SCAN).where(u.dirty).order_by(u.updated_at).limit(limit)
        return list(self._run("dirty", lambda c: [_scan_row(r) for r in c.execute(query)]))

    def forget_row_hashes(self, user_ids: Sequence[str]) -> None:
        def go(conn: Connection) -> None:
            for part in _chunks(list(user_ids)):
                conn.execute(update(t.users).where(t.users.c.user_id.in_(part), t.users.c.gone)
                             .values(row_hash=None))

        if user_ids:
            self._run("forget", go)

    def pending(self) -> tuple[int, dt.datetime | None]:
        u = t.users.c
        count, oldest = self._run("pending", lambda c: c.execute(
            select(func.count(), func.min(u.dirty_since)).where(u.dirty)).one())
        return int(count), oldest

    def write(self, writes: Sequence[UserWrite], now: dt.datetime) -> None:
        if writes:
            self._run("write", self._write, writes, now)

    def _write(self, conn: Connection, writes: Sequence[UserWrite], now: dt.datetime) -> None:
        """Users and deliveries (most of what a pass writes) through prepared upserts, with
        the values in the form the driver stores (the same timestamp for all); the rest through
        SQLAlchemy."""
        pg = self._dialect == "postgresql"
        at: object = now if pg else now.isoformat(" ", "microseconds")

        def flag(value: bool) -> object:
            return value if pg else int(value)

        conn.exec_driver_sql(_USERS_UPSERT.replace("?", "%s") if pg else _USERS_UPSERT, [
            (w.user_id, w.key_int, w.source_key, w.row_hash, flag(w.gone), flag(w.dirty), at,
             at, at if w.dirty else None, flag(w.seen_alive), w.identity, flag(w.recreating))
            for w in writes])
        delivered: list[tuple[object, ...]] = []
        forgotten: list[tuple[str, str]] = []
        q_set: list[dict[str, Any]] = []
        q_clear: list[tuple[str, str]] = []
        for w in writes:
            for dest, d in w.deliveries.items():
                if d is None:
                    forgotten.append((dest, w.user_id))
                else:
                    delivered.append((dest, w.user_id, d.fingerprint, d.field_tags,
                                      flag(d.deleted), at))
            q_set += [{"destination": q.destination, "user_id": w.user_id,
                       "fingerprint": q.fingerprint, "reason": q.reason, "since": now,
                       "last_attempt": now, "attempts": 1, "transient": q.transient}
                      for q in w.quarantine_set]
            q_clear += [(dest, w.user_id) for dest in w.quarantine_clear]
        if delivered:
            conn.exec_driver_sql(_DELIVERIES_UPSERT.replace("?", "%s") if pg
                                 else _DELIVERIES_UPSERT, delivered)
        self._delete_pairs(conn, t.deliveries, forgotten)
        entries = [e for w in writes for e in w.history]
        if entries:   # the audit trail: with the deliveries, in this transaction
            conn.exec_driver_sql(HISTORY_INSERT.replace("?", "%s") if pg else HISTORY_INSERT,
                                 history_rows(entries, pg))
        qins: Any = (postgresql.insert(t.quarantine) if self._dialect == "postgresql"
                     else sqlite.insert(t.quarantine))
        q = t.quarantine.c
        self._upsert(conn, t.quarantine, q_set, ["destination", "user_id"], {
            "since": case((q.fingerprint == qins.excluded.fingerprint, q.since),
                          else_=qins.excluded.since),
            "fingerprint": qins.excluded.fingerprint,
            "reason": qins.excluded.reason,
            "transient": qins.excluded.transient,
            "last_attempt": qins.excluded.last_attempt,
            "attempts": q.attempts + 1,
        })
        self._delete_pairs(conn, t.quarantine, q_clear)
        self._write_problems(conn, [w for w in writes if w.problems is not None], now)

    def _delete_pairs(self, conn: Connection, table: Table, pairs: list[tuple[str, str]]) -> None:
        for part in _chunks(pairs):
            conn.execute(delete(table).where(
                tuple_(table.c.destination, table.c.user_id).in_(list(part))))

    def _write_problems(self, conn: Connection, writes: list[UserWrite], now: dt.datetime) -> None:
        if not writes:
            return
        ids = [w.user_id for w in writes]
        existing: set[tuple[str, str]] = set()
        for part in _chunks(ids):
            existing.update((r[0], r[1]) for r in conn.execute(
                select(t.problems.c.user_id, t.problems.c.field)
                .where(t.problems.c.user_id.in_(part))))
        wanted = {(w.user_id, p.field): p.reason for w in writes for p in (w.problems or ())}
        stale = [pair for pair in existing if pair not in wanted]
        for part in _chunks(stale):
            conn.execute(delete(t.problems).where(
                tuple_(t.problems.c.user_id, t.problems.c.field).in_(list(part))))
        pins: Any = (postgresql.insert(t.problems) if self._dialect == "postgresql"
                     else sqlite.insert(t.problems))
        self._upsert(conn, t.problems, [
            {"user_id": uid, "field": f, "reason": reason, "since": now}
            for (uid, f), reason in wanted.items()
        ], ["user_id", "field"], {"reason": pins.excluded.reason})

    def counts(self) -> StateCounts:
        def get(conn: Connection) -> StateCounts:
            u = t.users.c
            known, gone, dirty = conn.execute(select(
                func.count(), func.coalesce(func.sum(case((u.gone, 1), else_=0)), 0),
                func.coalesce(func.sum(case((u.dirty, 1), else_=0)), 0))).one()
            q = t.quarantine.c
            quarantined: dict[str, int] = dict(conn.execute(
                select(q.destination, func.count()).group_by(q.destination)).all())
            d = t.deliveries.c
            delivered: dict[str, int] = dict(conn.execute(select(d.destination, func.count())
                                          .where(~d.deleted).group_by(d.destination)).all())
            problems = conn.execute(select(func.count(func.distinct(t.problems.c.user_id)))
                                    ).scalar_one()
            tombstones: dict[str, int] = dict(conn.execute(
                select(d.destination, func.count()).where(d.deleted).group_by(d.destination)
            ).all())
            return StateCounts(int(known) - int(gone), int(gone), int(dirty),
                               {k: int(v) for k, v in quarantined.items()},
                               {k: int(v) for k, v in delivered.items()}, int(problems),
                               {k: int(v) for k, v in tombstones.items()})

        result: StateCounts = self._run("counts", get)
        return result

    def quarantined(self, limit: int) -> list[QuarantineRow]:
        q = t.quarantine.c
        rows = self._run("quarantine", lambda c: c.execute(
            select(t.quarantine).order_by(q.since.desc(), q.user_id).limit(limit)).all())
        return [QuarantineRow(r.destination, r.user_id, r.reason, r.since, r.last_attempt,
                              r.attempts) for r in rows]

    def problems(self, limit: int) -> list[ProblemRow]:
        p = t.problems.c
        rows = self._run("problems", lambda c: c.execute(
            select(t.problems).order_by(p.since.desc(), p.user_id, p.field).limit(limit)).all())
        return [ProblemRow(r.user_id, r.field, r.reason, r.since) for r in rows]

    def quarantined_ids(self, user_ids: Sequence[str] | None) -> set[str]:
        return set(self._run("quarantine", self._quarantined_ids, user_ids))

    @staticmethod
    def _quarantined_ids(conn: Connection, user_ids: Sequence[str] | None) -> set[str]:
        q = t.quarantine.c
        if user_ids is None:
            return {r[0] for r in conn.execute(select(func.distinct(q.user_id)))}
        found: set[str] = set()
        for part in _chunks(list(dict.fromkeys(user_ids))):
            found.update(r[0] for r in conn.execute(
                select(func.distinct(q.user_id)).where(q.destination.in_(DESTINATIONS),
                                                       q.user_id.in_(part))))
        return found

    def requeue_quarantined(self, user_ids: Sequence[str] | None) -> int:
        def go(conn: Connection) -> int:
            ids = sorted(self._quarantined_ids(conn, user_ids))
            for part in _chunks(ids):
                conn.execute(delete(t.quarantine).where(
                    t.quarantine.c.destination.in_(DESTINATIONS),
                    t.quarantine.c.user_id.in_(part)))
                conn.execute(update(t.users).where(t.users.c.user_id.in_(part))
                             .values(dirty=True, row_hash=None, dirty_since=_waiting()))
            return len(ids)

        return int(self._run("retry", go))

    def forget(self, user_ids: Sequence[str] | None) -> int:
        def go(conn: Connection) -> int:
            d = t.deliveries.c
            alive = and_(~d.deleted)
            if user_ids is None:
                n = conn.execute(delete(t.deliveries).where(alive)).rowcount
                conn.execute(update(t.users).where(~t.users.c.gone)
                             .values(row_hash=None, dirty=True, dirty_since=_waiting()))
                return int(n)
            n = 0
            for part in _chunks(list(user_ids)):
                n += conn.execute(delete(t.deliveries).where(
                    alive, d.destination.in_(DESTINATIONS), d.user_id.in_(part))).rowcount
                conn.execute(update(t.users).where(t.users.c.user_id.in_(part))
                             .values(row_hash=None, dirty=True, dirty_since=_waiting()))
            return int(n)

        return int(self._run("resync", go))

def _waiting() -> Any:
    return func.coalesce(t.users.c.dirty_since, utcnow())


def _blank() -> dict[str, Any]:
    return {"row_hash": None, "gone": False, "dirty": False, "deliveries": {}, "quarantine": {},
            "seen_alive": False, "identity": None, "recreating": False}

