"""Shared fixtures: real PostgreSQL and MariaDB (each test gets its own schema or database), SQLite
files, the sandbox (in-process transport or real HTTP), and config builders.

On a machine without the servers the database tests skip with the reason; in CI (CI=true) a
missing server is a failure.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncer import logs
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer

from .helpers import IN_CI, MYSQL_ADMIN, PG_ADMIN, SANDBOX, pg_url_for


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if IN_CI:
        pytest.fail(f"{message}; in CI the database must be up", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    logs.configure("warning", json=True)


def _admin(url: str, what: str) -> Iterator[sa.Engine]:
    """A connection to a test server for creating schemas and databases (or a skip, or in CI
    a failure, naming the server)."""
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        _unavailable(what, exc)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    yield from _admin(PG_ADMIN, "PostgreSQL at 127.0.0.1:5432")


def _schema(pg_admin: sa.Engine, prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture
def pg_schema(pg_admin: sa.Engine) -> Iterator[str]:
    """A fresh schema in the `test` database; the URL that uses it is `pg_url`."""
    yield from _schema(pg_admin, "t")


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    return pg_url_for(pg_schema)


@pytest.fixture
def pg_state_url(pg_admin: sa.Engine) -> Iterator[str]:
    """A fresh schema for a PostgreSQL state."""
    for name in _schema(pg_admin, "s"):
        yield pg_url_for(name)


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[sa.Engine]:
    yield from _admin(MYSQL_ADMIN, "MariaDB/MySQL at 127.0.0.1:3306")


@pytest.fixture
def mysql_url(mysql_admin: sa.Engine) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    with mysql_admin.connect() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    base = sa.engine.make_url(MYSQL_ADMIN)
    yield base.set(database=name).render_as_string(hide_password=False)
    with mysql_admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE `{name}`"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


SOURCES = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgresql),
    pytest.param("mariadb", id="mariadb", marks=pytest.mark.mariadb),
]


@pytest.fixture(params=SOURCES)
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against a source (an empty database) in each supported database. A test
    for some of them says which: ``@pytest.mark.parametrize("source_url", ["sqlite",
    "postgresql"], indirect=True)``."""
    kind = request.param
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    if kind == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    if kind == "mariadb":
        return str(request.getfixturevalue("mysql_url"))
    raise ValueError(f"no such source database: {kind}")


# ----------------------------------------------------------------------------- app tables


# ----------------------------------------------------------------------------- configs


@pytest.fixture
def sandbox_app() -> SandboxApp:
    return SandboxApp(SandboxConfig(update_rate=1000, delete_rate=1000, withdraw_rate=1000),
                      Faults(seed=1))


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxApp(SANDBOX, Faults(seed=3))) as server:
        yield server


