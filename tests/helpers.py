"""What the tests share that is not a fixture: building and changing the test users table, configs
for it, running a pass against the sandbox, what Blux should hold for a row, waiting for a
condition, running the daemon as a real process, and an HTTP transport that records (and can
fail) requests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from syncer.config import Config
from syncer.configfile import parse
from syncer.pipeline import run_pass
from syncer.results import PassResult
from syncer.runtime import Runtime
from syncer.sandbox import SandboxApp, SandboxConfig, SandboxServer, mock_transport

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


def pg_url_for(schema: str) -> str:
    return f"{PG_ADMIN}?options=-csearch_path%3D{schema}"


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


def app_users(url: str) -> dict[str, dict[str, Any]]:
    """The live users of a test source table, by id as text."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM users")).mappings().all()
    engine.dispose()
    return {str(r["id"]): dict(r) for r in rows if not r["deleted_at"]}


def expected_blux(row: dict[str, Any]) -> dict[str, Any]:
    """What Blux should hold for a test row, computed independently of syncer's mapping."""
    props: dict[str, Any] = {}
    if row["phone"]:
        digits = "".join(ch for ch in row["phone"] if ch.isdigit())
        props["phone_number"] = "0" + digits[2:] if digits.startswith("82") else digits
    if row["email"]:
        props["email_address"] = row["email"]
    if row["marketing"] is not None:
        props["marketing_notification_consent"] = bool(int(row["marketing"]))
    if row["sms"] is not None:
        props["marketing_notification_sms_consent"] = row["sms"] == "Y"
    custom: dict[str, Any] = {}
    if row["name"] is not None:
        custom["name"] = row["name"]
    if row["points"] is not None:
        points = Decimal(str(row["points"]))
        custom["points"] = int(points) if points == points.to_integral_value() else float(points)
    return {"user_properties": props, "custom_user_properties": custom}


def assert_mirror_matches(app: SandboxApp, source_url: str) -> None:
    snap = app.snapshot()
    live = app_users(source_url)
    assert set(snap["users"]) == set(live)
    for uid, row in live.items():
        assert snap["users"][uid] == expected_blux(row), uid


def once(config: Config, app: SandboxApp, **kw: Any) -> PassResult:
    rt = Runtime(config, transport=mock_transport(app))
    try:
        rt.check()
        return run_pass(rt, **kw)
    finally:
        rt.close()


def requests(result: PassResult) -> dict[str, int]:
    return {str(endpoint): n for endpoint, n in result.counts.requests.items()}


TS_TYPES = {
    "postgresql": "timestamptz",
    "mariadb": "DATETIME(6)",
    "sqlite": "TEXT",
}


def kind_of(url: str) -> str:
    return "postgresql" if url.startswith("postgresql") else (
        "mariadb" if url.startswith("mysql") else "sqlite")


def now_sql(url: str) -> str:
    return {"postgresql": "clock_timestamp()", "mariadb": "NOW(6)",
            "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')"}[kind_of(url)]


def create_table(url: str, ts_type: str | None = None) -> None:
    ts = ts_type or TS_TYPES[kind_of(url)]
    execute(url, f"""CREATE TABLE users (
        id BIGINT PRIMARY KEY, name VARCHAR(100), phone VARCHAR(40), email VARCHAR(200),
        marketing INTEGER, sms VARCHAR(8), points NUMERIC(12, 2), touched VARCHAR(40),
        deleted_at VARCHAR(40), updated_at {ts})""")
    if kind_of(url) != "sqlite":
        execute(url, "CREATE INDEX users_updated_at ON users (updated_at)")


def add_users(url: str, ids: range, **cols: Any) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for i in ids:
            values = {"id": i, "name": f"user {i}", "phone": f"010-1000-{2000 + i}",
                      "email": f"u{i}@example.com", "marketing": i % 2, "sms": "Y",
                      "points": i, "touched": "t0", "deleted_at": None}
            values.update(cols)
            conn.execute(sa.text(
                f"INSERT INTO users ({', '.join(values)}, updated_at) VALUES "
                f"({', '.join(':' + c for c in values)}, {now_sql(url)})"), values)
    engine.dispose()


def touch(url: str, where: str, sets: str, bump: bool = True) -> None:
    extra = f", updated_at = {now_sql(url)}" if bump else ""
    execute(url, f"UPDATE users SET {sets}{extra} WHERE {where}")


def wait_for(condition: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the test's timeout")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, source_url: str, server: SandboxServer, state_url: str, *,
                 interval: float = 0.5, metrics_port: int | None = None,
                 extra: str = "", mode: str = "snapshot",
                 watermark_column: str | None = None) -> Path:
    path = tmp_path / f"config-{time.monotonic_ns()}.toml"
    metrics = f'[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n' if metrics_port else ""
    path.write_text(f"""
[source]
url = "{source_url}"
table = "users"

[capture]
mode = "{mode}"
soft_delete_column = "deleted_at"
{f'watermark_column = "{watermark_column}"' if watermark_column else ""}

[schedule]
interval_seconds = {interval}

[state]
url = "{state_url}"
key_file = "{tmp_path / 'fingerprint.key'}"

{MAPPING_TOML}
[blux]
base_url = "{server.blux_base_url}"
application_id = "{SANDBOX.blux_application_id}"
secret_key = "{SANDBOX.blux_secret_key}"
timeout_seconds = 2

[nachocode]
base_url = "{server.nachocode_base_url}"
api_key = "{SANDBOX.nachocode_api_key}"
secret_key = "{SANDBOX.nachocode_secret_key}"
timeout_seconds = 2

[delivery]
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.2
{metrics}{extra}""")
    return path


def start_daemon(config: Path, env: dict[str, str] | None = None,
                 log: Path | None = None) -> subprocess.Popen[bytes]:
    out = open(log or os.devnull, "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "syncer", "run", "-c", str(config)],
                            env={**os.environ, **(env or {})}, stdout=out,
                            stderr=subprocess.STDOUT)


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
            return response.status, (json.loads(body) if "healthz" in url else body)
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        return exc.code, (json.loads(body) if "healthz" in url else body)
    except (urllib.error.URLError, ConnectionError):
        return 0, None


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    return proc.wait(timeout=60)


class Recorder(httpx.AsyncBaseTransport):
    """Wraps a transport and keeps every request body."""

    def __init__(self, inner: httpx.AsyncBaseTransport,
                 override: Callable[[httpx.Request, int], httpx.Response | None] | None = None):
        self.inner = inner
        self.bodies: list[tuple[str, Any]] = []
        self.override = override

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        body = json.loads(request.content) if request.content else None
        self.bodies.append((request.url.path, body))
        if self.override is not None:
            found = self.override(request, len(self.bodies))
            if found is not None:
                return found
        return await self.inner.handle_async_request(request)


def failing_for(user_id: str, status: int = 500) -> Callable[[httpx.Request, int],
                                                              httpx.Response | None]:
    """An API that answers ``status`` (or hangs, for 0) to any request carrying this user."""
    def override(request: httpx.Request, _n: int) -> httpx.Response | None:
        body = json.loads(request.content)
        ids = [u["user_id"] for u in body.get("users", [])] + body.get("user_ids", [])
        if user_id not in ids:
            return None
        if status == 0:
            raise httpx.ReadTimeout("no answer", request=request)
        return httpx.Response(status, json={"message": "internal error"}, request=request)
    return override


def sqlite_source(tmp_path: Path, rows: list[dict[str, Any]], key_type: str = "BIGINT") -> str:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src, key_type=key_type)
    insert_users(src, rows)
    return src
