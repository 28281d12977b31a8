"""The audit trail of :mod:`syncer.state.sql`: reading and pruning ``syncer_history`` (its rows
are written by :class:`syncer.state.sql_ledger.SqlLedger` with the users' state rows)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Connection, delete, or_, select
from sqlalchemy.exc import SQLAlchemyError

from syncer.errors import StateError
from syncer.model import HistoryEntry, Operation, Result
from syncer.state import schema as t
from syncer.state.sql import SqlPart, brief

_H = t.history.c

# The insert every pass with deliveries makes, prepared once (``?``: SQLite's placeholders).
HISTORY_INSERT: Final = (
    "INSERT INTO syncer_history (user_id, destination, endpoint, operation, result, fields, "
    "consents, whole, pass_id, sent_at, acked_at, committed_at, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def history_rows(entries: Sequence[HistoryEntry], pg: bool) -> list[tuple[object, ...]]:
    """The entries as the driver stores them (SQLite: times as text, flags as 0/1)."""
    def at(value: dt.datetime | None) -> object:
        return value if pg or value is None else value.isoformat(" ", "microseconds")

    return [(e.user_id, e.destination, e.endpoint, str(e.operation), str(e.result),
             ",".join(e.fields) or None, encode_consents(e.consents),
             e.whole if pg else int(e.whole), e.pass_id, at(e.sent_at), at(e.acked_at),
             at(e.committed_at), e.reason or None) for e in entries]


def encode_consents(consents: Sequence[tuple[str, bool]]) -> str | None:
    return ",".join(f"{name}={'true' if on else 'false'}" for name, on in consents) or None


def decode_consents(text: str | None) -> tuple[tuple[str, bool], ...]:
    if not text:
        return ()
    pairs = (part.partition("=") for part in text.split(","))
    return tuple((name, value == "true") for name, _, value in pairs)


def _entry(r: Any) -> HistoryEntry:
    return HistoryEntry(
        r.user_id, r.destination, r.endpoint, Operation(r.operation), Result(r.result),
        tuple(r.fields.split(",")) if r.fields else (), decode_consents(r.consents), r.pass_id,
        r.sent_at, r.acked_at, r.committed_at, r.reason or "", bool(r.whole), int(r.id))


class SqlHistory(SqlPart):
    """:class:`syncer.state.History` on SQLAlchemy."""

    def timeline(self, user_id: str, destination: str | None = None) -> list[HistoryEntry]:
        query = select(t.history).where(_H.user_id == user_id).order_by(_H.id)
        if destination is not None:
            query = query.where(_H.destination == destination)
        return [_entry(r) for r in self._run("history", lambda c: c.execute(query).all())]

    def between(self, since: dt.datetime | None, until: dt.datetime | None, *,
                plain_updates: bool = True) -> Iterator[HistoryEntry]:
        query = select(t.history).order_by(_H.id)
        if since is not None:
            query = query.where(_H.acked_at >= since)
        if until is not None:
            query = query.where(_H.acked_at < until)
        if not plain_updates:
            query = query.where(or_(_H.operation != str(Operation.UPDATE),
                                    _H.consents.is_not(None)))
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=5000) \
                    .execute(query)
                for row in result:
                    yield _entry(row)
        except SQLAlchemyError as exc:
            raise StateError(f"state database (history): {brief(exc)}") from exc

    def prune(self, before: dt.datetime, batch: int) -> int:
        def go(conn: Connection) -> int:
            ids = [r[0] for r in conn.execute(
                select(_H.id).where(_H.acked_at < before).order_by(_H.acked_at).limit(batch))]
            if ids:
                conn.execute(delete(t.history).where(_H.id.in_(ids)))
            return len(ids)

        return int(self._run("prune history", go))
