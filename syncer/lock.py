"""One sender per state: two daemons on one state never both send.

A PostgreSQL advisory lock when the state is on PostgreSQL (held by a connection of its own: it
goes away with the process, however it dies), an ``flock`` on a file beside a SQLite state. The
instance that does not get it stands by and tries again every few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Any, Protocol

import structlog
from sqlalchemy.engine import make_url

from syncer.config import Config

log = structlog.get_logger("syncer.lock")

# pg_try_advisory_lock(classid, objid): classid "SYNC", objid from the state's database + schema.
CLASS_ID = 0x53594E43


class SenderLock(Protocol):
    error: str | None   # why the last acquire could not even ask (the state is unreachable)

    def acquire(self) -> bool:
        """Take the lock if it is free; True when this process holds it."""

    def holds(self) -> bool:
        """Whether this process still holds it (a dropped connection loses it)."""

    def holder(self) -> str | None:
        """Who holds it, if anyone (for status and logs)."""

    def release(self) -> None: ...


class FileLock:
    def __init__(self, path: Path, instance: str) -> None:
        self.path = path
        self.instance = instance
        self._fd: int | None = None
        self.error: str | None = None

    def acquire(self) -> bool:
        if self._fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            self.error = f"cannot open {self.path} ({exc.strerror})"
            return False
        self.error = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.instance.encode() + b"\n", 0)
        self._fd = fd
        return True

    def holds(self) -> bool:
        return self._fd is not None

    def holder(self) -> str | None:
        if self._fd is not None:
            return self.instance
        try:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return self.path.read_text(encoding="utf-8").strip() or "another process"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class PostgresLock:
    def __init__(self, url: str, instance: str) -> None:
        parsed = make_url(url)
        self.conninfo = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
        self.instance = instance
        self._conn: Any = None
        self.error: str | None = None

    def _connect(self) -> Any:
        import psycopg

        # A half-open connection must be noticed in seconds, not TCP's fifteen minutes: the
        # lock lives and dies with this connection.
        return psycopg.connect(self.conninfo, autocommit=True, connect_timeout=10,
                               keepalives=1, keepalives_idle=10, keepalives_interval=5,
                               keepalives_count=3, tcp_user_timeout=20_000,
                               options="-c statement_timeout=10000",
                               application_name=f"syncer-lock {self.instance}"[:63])

    _KEY = ("hashtext('syncer:' || current_database() || ':' || current_schema())")

    def acquire(self) -> bool:
        import psycopg

        if self._conn is not None and self.holds():
            return True
        self._drop()
        try:
            conn = self._connect()
            got = conn.execute(f"SELECT pg_try_advisory_lock({CLASS_ID}, {self._KEY})").fetchone()
        except psycopg.Error as exc:
            self.error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            log.warning("lock.unavailable", error=self.error)
            return False
        self.error = None
        if got and got[0]:
            self._conn = conn
            return True
        conn.close()
        return False

    def holds(self) -> bool:
        """The lock is held by *this* session (not only: the connection answers; through a
        transaction-mode pooler the session could be someone else's)."""
        import psycopg

        if self._conn is None:
            return False
        try:
            row = self._conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                f"AND pid = pg_backend_pid() AND classid = {CLASS_ID} "
                f"AND objid = ({self._KEY})::oid").fetchone()
        except psycopg.Error:
            self._drop()
            return False
        if not row or not row[0]:
            self._drop()
            return False
        return True

    def holder(self) -> str | None:
        import psycopg

        if self._conn is not None:
            return self.instance
        try:
            with self._connect() as conn:
                row = conn.execute(
                    "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                    "JOIN pg_stat_activity a ON a.pid = l.pid "
                    f"WHERE l.locktype = 'advisory' AND l.classid = {CLASS_ID} "
                    f"AND l.objid = ({self._KEY})::oid AND l.granted").fetchone()
        except psycopg.Error:
            return None
        if row is None:
            return None
        name = str(row[0] or "").removeprefix("syncer-lock ")
        return name or f"a session from {row[1]}"

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # a dead connection may fail to close
                self._conn.close()
            self._conn = None

    def release(self) -> None:
        self._drop()


def for_config(config: Config, instance: str) -> SenderLock:
    url = make_url(config.state.url)
    if url.get_backend_name() == "postgresql":
        return PostgresLock(config.state.url, instance)
    from syncer.databases import sqlite_path

    path = sqlite_path(config.state.url)
    if path is None:   # an in-memory state belongs to one process: nothing to share
        return FileLock(Path(f"/tmp/syncer-{os.getuid()}-memory.lock"), instance)  # noqa: S108
    return FileLock(path.with_name(path.name + ".lock"), instance)
