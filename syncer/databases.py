"""Database connections: from a configured URL to a SQLAlchemy engine, for the app's database
(the source) and for syncer's state.

Both take any SQLAlchemy URL; a URL without a driver gets the one syncer ships with (psycopg 3 for
PostgreSQL, PyMySQL for MySQL/MariaDB). Problems name the config key. The source's connections
refuse to wait long for a lock or run a statement for ever, notice a dead server in a minute, and
hand on values the drivers cannot turn into Python values (:class:`normalize.Unreadable`) instead
of failing the whole read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Final

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from syncer.errors import ConfigError
from syncer.normalize import FOREVER, Unreadable, is_zero_date
from syncer.secret import redact_url, scrub

SOURCE_BACKENDS: Final = ("postgresql", "mysql", "mariadb", "sqlite")
STATE_BACKENDS: Final = ("postgresql", "sqlite")
_DRIVERS: Final = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql",
                   "mariadb": "mariadb+pymysql"}


def parse_url(url: str, key: str, backends: tuple[str, ...]) -> URL:
    """A database URL for ``key`` (e.g. ``[source] url``), with syncer's driver where none is
    named. Raises :class:`ConfigError` naming the key."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{key} is not a database URL: {redact_url(url)}") from None
    backend = parsed.get_backend_name()
    if backend not in backends:
        names = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB",
                 "sqlite": "SQLite"}
        raise ConfigError(f"{key}: {backend} is not supported here "
                          f"({', '.join(dict.fromkeys(names[b] for b in backends))})")
    driver = _DRIVERS.get(parsed.drivername)
    return parsed.set(drivername=driver) if driver else parsed


def create_source_engine(url: str) -> Engine:
    """The app's database: read with lock and statement timeouts, TCP keepalives, and odd values
    (zero dates, invalid UTF-8, 'infinity') handed on instead of failing the read."""
    parsed = parse_url(url, "[source] url", SOURCE_BACKENDS)
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if backend == "postgresql":
        # A dead server or network is noticed in about a minute, not after TCP's 15.
        kwargs["connect_args"] = {"application_name": "syncer", "connect_timeout": 10,
                                  "keepalives": 1, "keepalives_idle": 30,
                                  "keepalives_interval": 10, "keepalives_count": 3}
    elif backend in ("mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10, "read_timeout": 600,
                                  "write_timeout": 60}
    else:
        kwargs = {"connect_args": {"check_same_thread": False, "timeout": 30},
                  "hide_parameters": True}
    if backend in ("mysql", "mariadb"):
        kwargs["connect_args"]["conv"] = _mysql_conversions()
    engine = create_engine(parsed, **kwargs)
    event.listen(engine, "connect", _session_limits(backend))
    event.listen(engine, "connect", _readable_values(backend))
    return engine


# ----------------------------------------------------------------------------- odd values
# A value the driver cannot turn into a Python value must cost only its own row, not the whole
# read: it is handed on as :class:`normalize.Unreadable` (which names its kind, never the value).


def _mysql_conversions() -> dict[int, Any]:
    """PyMySQL's decoders, with MySQL's zero dates ('0000-00-00 00:00:00': "not set" in many
    schemas) as NULL instead of the text PyMySQL hands back for them."""
    import pymysql.converters as conv
    from pymysql.constants import FIELD_TYPE

    def date_or_none(decode: Any) -> Any:
        def convert(value: Any) -> Any:
            result = decode(value)
            return None if isinstance(result, str) and is_zero_date(result) else result
        return convert

    decoders = dict(conv.decoders)
    for field_type in (FIELD_TYPE.DATETIME, FIELD_TYPE.TIMESTAMP, FIELD_TYPE.DATE):
        decoders[field_type] = date_or_none(decoders[field_type])
    out: dict[Any, Any] = dict(conv.conversions)
    out.update(decoders)
    return out


def _sqlite_text(data: bytes) -> object:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return Unreadable("text that is not valid UTF-8")


def _pg_loaders() -> list[tuple[str, Any]]:
    """Loaders for PostgreSQL's dates and timestamps that hand 'infinity', '-infinity' and years
    outside 1..9999 on as Unreadable instead of failing the whole result."""
    import psycopg
    from psycopg.types import datetime as pdt

    out: list[tuple[str, Any]] = []
    for name, base in (("timestamp", pdt.TimestampLoader), ("timestamptz", pdt.TimestamptzLoader),
                       ("date", pdt.DateLoader), ("timestamp", pdt.TimestampBinaryLoader),
                       ("timestamptz", pdt.TimestamptzBinaryLoader),
                       ("date", pdt.DateBinaryLoader)):

        class Safe(base):  # type: ignore[valid-type,misc]
            def load(self, data: Any) -> Any:
                try:
                    return super().load(data)
                except psycopg.DataError:
                    if _positive_infinity(data):
                        return FOREVER
                    return Unreadable(f"a {self._kind} outside the years 1 to 9999")

        Safe._kind = name
        out.append((name, Safe))
    return out


def _positive_infinity(data: Any) -> bool:
    """'infinity' as PostgreSQL sends it: the text, or the largest value of the binary form."""
    raw = bytes(data)
    return raw == b"infinity" or raw in (b"\x7f\xff\xff\xff\xff\xff\xff\xff", b"\x7f\xff\xff\xff")


def _readable_values(backend: str) -> Any:
    loaders = _pg_loaders() if backend == "postgresql" else []

    def apply(dbapi_conn: Any, _record: Any) -> None:
        if backend == "sqlite":
            dbapi_conn.text_factory = _sqlite_text
        for name, loader in loaders:
            dbapi_conn.adapters.register_loader(name, loader)

    return apply


# The reader never waits long for a lock (a migration holding the table) and never runs a
# statement for ages: the pass fails, says why, and the next one tries again.
LOCK_TIMEOUT_SECONDS: Final = 10
STATEMENT_TIMEOUT_SECONDS: Final = 600


def _session_limits(backend: str) -> Any:
    statements = {
        "postgresql": [f"SET lock_timeout = '{LOCK_TIMEOUT_SECONDS}s'",
                       f"SET statement_timeout = '{STATEMENT_TIMEOUT_SECONDS}s'",
                       "SET idle_in_transaction_session_timeout = '600s'"],
        "mysql": [f"SET SESSION lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}",
                  f"SET SESSION innodb_lock_wait_timeout = {LOCK_TIMEOUT_SECONDS}",
                  f"SET SESSION max_execution_time = {STATEMENT_TIMEOUT_SECONDS * 1000}",
                  f"SET SESSION max_statement_time = {STATEMENT_TIMEOUT_SECONDS}"],
    }.get("mysql" if backend == "mariadb" else backend, [])

    def apply(dbapi_conn: Any, _record: Any) -> None:
        for statement in statements:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute(statement)
            except Exception:
                if backend == "postgresql":
                    raise
            finally:
                cursor.close()
        if backend == "postgresql":
            dbapi_conn.commit()

    return apply


def describe_error(exc: BaseException) -> str:
    """A database error in one line, without values from the rows (they may be personal data)."""
    orig = getattr(exc, "orig", None) or exc
    first = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    return scrub(first[:300])


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (plain or ``file:`` URI form); None for an in-memory one."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database.startswith("file:"):
        database = database[5:].split("?", 1)[0]
        if database.startswith("//"):
            database = database[2:]
    if not database or database == ":memory:" or "mode=memory" in (parsed.database or ""):
        return None
    return Path(database).expanduser().resolve()


def create_state_engine(url: str) -> Engine:
    """syncer's own state: SQLite (WAL, a new file created 0600) or PostgreSQL."""
    parsed = parse_url(url, "[state] url", STATE_BACKENDS)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            parent = path.parent
            if not parent.is_dir():
                raise ConfigError(
                    f"[state] url: the directory {parent} does not exist (create it, or use "
                    "systemd's StateDirectory=)"
                )
            _create_private(path)
        engine = create_engine(parsed, connect_args={"check_same_thread": False,
                                                     "timeout": 30}, hide_parameters=True)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(parsed, pool_pre_ping=True, hide_parameters=True)


def _create_private(path: Path) -> None:
    """Create a new SQLite state file with mode 0600 before SQLite opens it (an empty file is an
    empty database); SQLite gives its -wal and -shm files the same mode."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"[state] url: cannot create {path} ({exc.strerror})") from None


