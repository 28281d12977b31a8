"""Shared fixtures: real PostgreSQL and MariaDB (each test gets its own schema or database), SQLite
files, the sandbox (in-process transport or real HTTP), and config builders.

On a machine without the servers the database tests skip with the reason; in CI (CI=true) a
missing server is a failure.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncer import logs
from syncer.config import Config
from syncer.configfile import parse
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer

PG_ADMIN = os.environ.get("SYNCER_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MYSQL_ADMIN = os.environ.get("SYNCER_TEST_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() == "true"

SANDBOX = SandboxConfig()

# The mapping of the test users table, for tests that write a config file.
MAPPING_TOML = """[mapping.user_properties]
phone_number = "phone"
email_address = "email"
marketing_notification_consent = "marketing"
marketing_notification_sms_consent = "sms"

[mapping.custom_user_properties]
name = "name"
points = "points"
"""


def _unavailable(what: str, exc: Exception) -> None:
    message = f"{what} is not reachable ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    if IN_CI:
        pytest.fail(f"{message}; in CI the database must be up", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    logs.configure("warning", json=True)


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        _unavailable("PostgreSQL at 127.0.0.1:5432", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema(pg_admin: sa.Engine) -> Iterator[str]:
    """A fresh schema in the `test` database; the URL that uses it is `pg_url`."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


def pg_url_for(schema: str) -> str:
    return f"{PG_ADMIN}?options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    return pg_url_for(pg_schema)


@pytest.fixture
def pg_state_url(pg_admin: sa.Engine) -> Iterator[str]:
    name = f"s_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield pg_url_for(name)
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture(scope="session")
def mysql_admin() -> Iterator[sa.Engine]:
    engine = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except Exception as exc:
        _unavailable("MariaDB/MySQL at 127.0.0.1:3306", exc)
    yield engine
    engine.dispose()


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


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def source_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same test against a source in each supported database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'app.db'}"
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("mysql_url"))


# ----------------------------------------------------------------------------- app tables

USERS_COLUMNS = ("id", "name", "phone", "email", "marketing", "sms", "points", "touched",
                 "deleted_at")


def create_users_table(url: str, *, key_type: str = "BIGINT") -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(f"""
            CREATE TABLE users (
                id {key_type} PRIMARY KEY,
                name VARCHAR(100),
                phone VARCHAR(40),
                email VARCHAR(200),
                marketing INTEGER,
                sms VARCHAR(8),
                points NUMERIC(12, 2),
                touched VARCHAR(40),
                deleted_at VARCHAR(40)
            )"""))
    engine.dispose()


def user_row(i: int, **over: Any) -> dict[str, Any]:
    row = {"id": i, "name": f"user {i}", "phone": f"010-{1000 + i % 9000}-{2000 + i % 7000}",
           "email": f"u{i}@example.com", "marketing": i % 2, "sms": "Y" if i % 3 else "N",
           "points": i % 1000, "touched": "t0", "deleted_at": None}
    row.update(over)
    return row


def insert_users(url: str, rows: list[dict[str, Any]]) -> None:
    engine = sa.create_engine(url)
    cols = list(rows[0]) if rows else []
    with engine.begin() as conn:
        for i in range(0, len(rows), 5000):
            conn.execute(sa.text(
                f"INSERT INTO users ({', '.join(cols)}) VALUES "
                f"({', '.join(':' + c for c in cols)})"), rows[i:i + 5000])
    engine.dispose()


def execute(url: str, sql: str, params: Any = None) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(sql), params or {})
    engine.dispose()


# ----------------------------------------------------------------------------- configs


def make_config(source_url: str, state_url: str, *, blux_url: str = "http://sandbox/blux",
                nachocode_url: str | None = "http://sandbox/nachocode", fast: bool = True,
                **sections: dict[str, Any]) -> Config:
    """A config for the test tables; ``fast`` lifts the rate limits (for the in-process sandbox,
    which has them lifted too)."""
    raw: dict[str, Any] = {
        "source": {"url": source_url, "table": "users", "primary_key": "id"},
        "capture": {"mode": "snapshot", "soft_delete_column": "deleted_at"},
        "state": {"url": state_url},
        "mapping": {
            "user_properties": {"phone_number": "phone", "email_address": "email",
                                "marketing_notification_consent": "marketing",
                                "marketing_notification_sms_consent": "sms"},
            "custom_user_properties": {"name": "name", "points": "points"},
        },
        "blux": {"base_url": blux_url, "application_id": SANDBOX.blux_application_id,
                 "secret_key": SANDBOX.blux_secret_key, "timeout_seconds": 2.0},
        "delivery": {"backoff_initial_seconds": 0.001, "backoff_max_seconds": 0.01,
                     "retry_after_max_seconds": 0.01},
    }
    if nachocode_url:
        raw["nachocode"] = {"base_url": nachocode_url, "api_key": SANDBOX.nachocode_api_key,
                            "secret_key": SANDBOX.nachocode_secret_key, "timeout_seconds": 2.0}
    if fast:
        raw["blux"].update(update_rate=1000, delete_rate=1000)
        if nachocode_url:
            raw["nachocode"]["rate"] = 1000
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return parse(raw, path="<test>")


@pytest.fixture
def sandbox_app() -> SandboxApp:
    return SandboxApp(SandboxConfig(update_rate=1000, delete_rate=1000, withdraw_rate=1000),
                      Faults(seed=1))


@pytest.fixture
def sandbox_server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxApp(SANDBOX, Faults(seed=3))) as server:
        yield server


def app_users(url: str) -> dict[str, dict[str, Any]]:
    """The live users of a test source table, by id as text."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM users")).mappings().all()
    engine.dispose()
    return {str(r["id"]): dict(r) for r in rows if not r["deleted_at"]}

