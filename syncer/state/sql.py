"""The state in SQLite (the default) or PostgreSQL, through SQLAlchemy Core: the store, its
schema's migrations, and its smaller roles (cursors, the pass log, operator requests); the ledger
is in :mod:`syncer.state.sql_ledger`."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Table,
    delete,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from syncer.clock import utcnow
from syncer.databases import create_state_engine, sqlite_path
from syncer.errors import ConfigError, StateError
from syncer.results import PassCounts, PassKind, PassOutcome
from syncer.secret import redact_url
from syncer.state import (
    PassRecord,
)
from syncer.state import schema as t


def migrations_dir() -> Path:
    """Where the Alembic scripts are: the installed ``syncer.migrations``, or ``migrations/`` of a
    source checkout."""
    try:
        import syncer.migrations as installed  # type: ignore[import-not-found,unused-ignore]

        return Path(installed.__file__).parent
    except ImportError:
        return Path(__file__).resolve().parents[2] / "migrations"


def state_location(url: str) -> str:
    """Where a state lives, for messages: the SQLite file, or the URL without its password."""
    try:
        path = sqlite_path(url)
    except ArgumentError:
        path = None
    return str(path) if path is not None else redact_url(url)


def state_exists(url: str) -> bool:
    """Whether a state was ever created at ``url``; finding out creates nothing."""
    try:
        backend = make_url(url).get_backend_name()
    except ArgumentError:
        raise ConfigError(f"[state] url is not a database URL: {redact_url(url)}") from None
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is None or not path.is_file() or path.stat().st_size == 0:
            return False
    engine = create_state_engine(url)
    try:
        with engine.connect() as conn:
            return inspect(conn).has_table(t.passes.name)
    except SQLAlchemyError as exc:
        raise StateError(f"state database: {brief(exc)}") from exc
    finally:
        engine.dispose()


def migrate(engine: Engine) -> None:
    """Create or upgrade the state schema to the newest revision."""
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except SQLAlchemyError as exc:
        raise StateError(f"state migration failed: {brief(exc)}") from exc


def brief(exc: SQLAlchemyError) -> str:
    orig = getattr(exc, "orig", None)
    return str(orig or exc).strip().splitlines()[0]


class SqlPart:
    """What every role of the SQL store shares: the engine, one transaction per call with
    database errors translated, and the dialect's upsert."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name

    def _run(self, what: str, fn: Any, *args: Any) -> Any:
        try:
            with self.engine.begin() as conn:
                return fn(conn, *args)
        except SQLAlchemyError as exc:
            raise StateError(f"state database ({what}): {brief(exc)}") from exc
        except (OverflowError, ValueError) as exc:  # a value the database cannot hold
            raise StateError(f"state database ({what}): {type(exc).__name__}: "
                             f"{str(exc)[:120]}") from exc

    def _upsert(self, conn: Connection, table: Table, rows: list[dict[str, Any]],
                keys: list[str], update_cols: dict[str, Any] | None = None) -> None:
        if not rows:
            return
        ins: Any = (postgresql.insert(table) if self._dialect == "postgresql"
                    else sqlite.insert(table))
        cols = update_cols if update_cols is not None else {
            c: ins.excluded[c] for c in rows[0] if c not in keys
        }
        stmt = ins.on_conflict_do_update(index_elements=keys, set_=cols) if cols \
            else ins.on_conflict_do_nothing(index_elements=keys)
        conn.execute(stmt, rows)

    def _binary(self, column: Any) -> Any:
        return column.collate("C") if self._dialect == "postgresql" else column


class SqlCursors(SqlPart):
    """:class:`syncer.state.Cursors` on SQLAlchemy."""

    def get_meta(self, name: str) -> str | None:
        value = self._run("meta", lambda c: c.execute(
            select(t.meta.c.value).where(t.meta.c.key == name)).scalar())
        return None if value is None else str(value)

    def set_meta(self, name: str, value: str) -> None:
        self._run("meta", lambda c: self._upsert(c, t.meta, [{"key": name, "value": value}],
                                                 ["key"]))

    def get(self, name: str) -> str | None:
        value = self._run("cursor", lambda c: c.execute(
            select(t.cursors.c.value).where(t.cursors.c.name == name)).scalar())
        return None if value is None else str(value)

    def set(self, name: str, value: str | None, now: dt.datetime) -> None:
        def put(conn: Connection) -> None:
            if value is None:
                conn.execute(delete(t.cursors).where(t.cursors.c.name == name))
            else:
                self._upsert(conn, t.cursors, [{"name": name, "value": value, "updated_at": now}],
                             ["name"])

        self._run("cursor", put)


class SqlPassLog(SqlPart):
    """:class:`syncer.state.PassLog` on SQLAlchemy."""

    def start(self, kind: PassKind, mode: str, now: dt.datetime, instance: str | None) -> int:
        return int(self._run("pass", lambda c: c.execute(t.passes.insert().values(
            started_at=now, kind=str(kind), mode=mode, outcome=str(PassOutcome.RUNNING),
            counts="{}", instance=instance)).inserted_primary_key[0]))

    def finish(self, pass_id: int, outcome: PassOutcome, counts: PassCounts,
               message: str | None, now: dt.datetime, kind: PassKind | None = None) -> None:
        values: dict[str, Any] = {"finished_at": now, "outcome": str(outcome),
                                  "message": message,
                                  "counts": json.dumps(counts.to_json(), sort_keys=True)}
        if kind is not None:
            values["kind"] = str(kind)
        self._run("pass", lambda c: c.execute(update(t.passes).where(t.passes.c.id == pass_id)
                                             .values(**values)))

    def recent(self, limit: int) -> list[PassRecord]:
        p = t.passes.c
        rows = self._run("passes", lambda c: c.execute(
            select(t.passes).order_by(p.id.desc()).limit(limit)).all())
        return [PassRecord(r.id, r.started_at, r.finished_at, PassKind(r.kind), r.mode,
                           PassOutcome(r.outcome), PassCounts.from_json(json.loads(r.counts
                                                                                or "{}")),
                           r.message, r.instance) for r in rows]

    def prune(self, keep: int, batch: int) -> int:
        def go(conn: Connection) -> int:
            p = t.passes.c
            edge = conn.execute(select(p.id).order_by(p.id.desc()).offset(keep).limit(1)).scalar()
            if edge is None:
                return 0
            ids = [r[0] for r in conn.execute(
                select(p.id).where(p.id <= edge).order_by(p.id).limit(batch))]
            if ids:
                conn.execute(delete(t.passes).where(p.id.in_(ids)))
            return len(ids)

        return int(self._run("prune", go))


class SqlRequests(SqlPart):
    """:class:`syncer.state.Requests` on SQLAlchemy."""

    def add(self, kind: str, user_ids: Sequence[str] | None) -> int:
        rows = [{"kind": kind, "user_id": uid, "created_at": utcnow()}
                for uid in (user_ids if user_ids is not None else [None])]
        self._run("request", lambda c: c.execute(t.requests.insert(), rows))
        return len(rows)

    def take(self) -> list[tuple[str, str | None]]:
        def take(conn: Connection) -> list[tuple[str, str | None]]:
            r = t.requests.c
            rows = conn.execute(select(r.id, r.kind, r.user_id).order_by(r.id)).all()
            if rows:
                conn.execute(delete(t.requests).where(r.id <= rows[-1][0]))
            return [(row[1], row[2]) for row in rows]

        return list(self._run("requests", take))


class SqlStateStore:
    """:class:`syncer.state.StateStore` on SQLAlchemy: SQLite or PostgreSQL, its schema migrated
    (Alembic, ``migrations/``) when it opens."""

    def __init__(self, engine: Engine, *, run_migrations: bool = True) -> None:
        from syncer.state.sql_history import SqlHistory
        from syncer.state.sql_ledger import SqlLedger

        self.engine = engine
        if run_migrations:
            migrate(engine)
        self.ledger = SqlLedger(engine)
        self.passes = SqlPassLog(engine)
        self.requests = SqlRequests(engine)
        self.cursors = SqlCursors(engine)
        self.history = SqlHistory(engine)

    @classmethod
    def from_url(cls, url: str, *, run_migrations: bool = True) -> SqlStateStore:
        return cls(create_state_engine(url), run_migrations=run_migrations)

    def close(self) -> None:
        self.engine.dispose()
