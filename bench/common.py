"""Shared pieces of the benchmarks: a PostgreSQL users table of any size, configs, the sandbox,
and a timer for the statements a pass sends to the source database."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from syncer import logs
from syncer.config import Config
from syncer.configfile import parse
from syncer.sandbox import Faults, SandboxApp, SandboxConfig

logs.configure(os.environ.get("SYNCER_BENCH_LOG_LEVEL", "warning"))

PG = os.environ.get("SYNCER_BENCH_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
RESULTS = Path(__file__).resolve().parent / "results"

MAPPING = {
    "user_properties": {"phone_number": "phone", "email_address": "email",
                        "marketing_notification_consent": "marketing_ok",
                        "marketing_notification_sms_consent": "sms_ok",
                        "marketing_notification_push_consent": "push_ok",
                        "nighttime_notification_consent": "night_ok"},
    "custom_user_properties": {"name": "display_name", "points": "points",
                               "birthday": "birthday"},
}
COLUMNS = ["display_name", "phone", "email", "marketing_ok", "sms_ok", "push_ok", "night_ok",
           "points", "birthday", "deleted_at"]


def schema_url(schema: str) -> str:
    return f"{PG}?options=-csearch_path%3D{schema}"


def admin() -> sa.Engine:
    return sa.create_engine(PG, isolation_level="AUTOCOMMIT")


def seed_users(schema: str, n: int) -> str:
    """A fresh schema with ``n`` users (realistic columns, an index on updated_at)."""
    engine = admin()
    with engine.connect() as conn:
        conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(f"""
            CREATE TABLE "{schema}".users (
                id bigint PRIMARY KEY,
                display_name text NOT NULL,
                phone text,
                email text,
                marketing_ok boolean,
                sms_ok char(1),
                push_ok smallint,
                night_ok boolean,
                points numeric(12, 2),
                birthday date,
                last_login_at timestamptz,
                deleted_at timestamptz,
                updated_at timestamptz NOT NULL DEFAULT now()
            )"""))
        conn.execute(sa.text(f"""
            INSERT INTO "{schema}".users
            SELECT g, '사용자 ' || g,
                   '010-' || lpad((g % 10000)::text, 4, '0') || '-'
                          || lpad((g / 7 % 10000)::text, 4, '0'),
                   'user' || g || '@example.com',
                   g % 3 <> 0, CASE WHEN g % 2 = 0 THEN 'Y' ELSE 'N' END, (g % 2)::smallint,
                   g % 5 = 0, (g % 100000) / 100.0, date '1970-01-01' + (g % 15000),
                   now(), NULL, now() - interval '1 day'
              FROM generate_series(1, {n}) AS g"""))
        conn.execute(sa.text(f'CREATE INDEX ON "{schema}".users (updated_at)'))
        conn.execute(sa.text(f'ANALYZE "{schema}".users'))
    engine.dispose()
    return schema_url(schema)


def raw_config(source_url: str, state_url: str, mode: str = "snapshot",
               **sections: dict[str, Any]) -> dict[str, Any]:
    """The benchmarks' config as the TOML tree, each section updated from ``sections``."""
    raw: dict[str, Any] = {
        "source": {"url": source_url, "table": "users", "primary_key": "id"},
        "capture": {"mode": mode, "watermark_column": "updated_at",
                    "soft_delete_column": "deleted_at", "lookback_seconds": 300},
        "state": {"url": state_url},
        "mapping": MAPPING,
        "blux": {"base_url": "http://sandbox/blux", "application_id": "sandbox-app",
                 "secret_key": "sandbox-blux-secret"},
        "nachocode": {"base_url": "http://sandbox/nachocode", "api_key": "sandbox-nacho-api-key",
                      "secret_key": "sandbox-nacho-secret"},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return raw


def config(source_url: str, state_url: str, mode: str = "snapshot",
           **sections: dict[str, Any]) -> Config:
    return parse(raw_config(source_url, state_url, mode, **sections), path="<bench>")


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    """``raw`` (see :func:`raw_config`) as a config file, for ``syncer`` run as a process."""
    lines: list[str] = []

    def table(name: str, values: dict[str, Any]) -> None:
        scalars = {k: v for k, v in values.items() if not isinstance(v, dict)}
        if scalars:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars.items())
        for key, sub in values.items():
            if isinstance(sub, dict):
                table(f"{name}.{key}", sub)

    for name, values in raw.items():
        table(name, values)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))   # a JSON string is a TOML basic string


def fast_sandbox() -> SandboxApp:
    """A sandbox that accepts far more than the documented rates (to load state quickly)."""
    return SandboxApp(SandboxConfig(update_rate=100_000, delete_rate=100_000,
                                    withdraw_rate=100_000), Faults())


@contextmanager
def statement_timer(engine: sa.Engine) -> Iterator[list[float]]:
    """Round-trip time of every statement sent on ``engine`` (execute + fetch)."""
    times: list[float] = []
    started: dict[int, float] = {}

    def before(conn: Any, cursor: Any, *_: Any) -> None:
        started[id(cursor)] = time.perf_counter()

    def after(conn: Any, cursor: Any, *_: Any) -> None:
        times.append(time.perf_counter() - started.pop(id(cursor), time.perf_counter()))

    sa.event.listen(engine, "before_cursor_execute", before)
    sa.event.listen(engine, "after_cursor_execute", after)
    try:
        yield times
    finally:
        sa.event.remove(engine, "before_cursor_execute", before)
        sa.event.remove(engine, "after_cursor_execute", after)


def machine() -> dict[str, Any]:
    pg_version = ""
    try:
        engine = admin()
        with engine.connect() as conn:
            pg_version = conn.execute(sa.text("SHOW server_version")).scalar_one()
        engine.dispose()
    except Exception:
        pg_version = "unavailable"
    cpu = ""
    with suppress(OSError):
        cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                             capture_output=True, text=True, check=False).stdout.strip()
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "cpu": cpu,
            "postgresql": pg_version, "platform": platform.platform()}


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike getrusage's maxrss, it does not carry
    over from the parent across fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save(name: str, result: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(json.dumps(result, indent=2, default=str))


@contextmanager
def sandbox_process(latency: float = 0.0, documented_rates: bool = False,
                    ) -> Iterator[tuple[str, str]]:
    """The sandbox over real HTTP in a process of its own (its work is not syncer's): yields the
    Blux and nachocode base URLs. Without ``documented_rates`` it accepts any rate."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    args = [sys.executable, "-m", "bench.sandbox_proc", "--port", str(port),
            "--latency", str(latency)] + ([] if documented_rates else ["--unlimited"])
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/_sandbox/faults", timeout=1).read()
                break
            except OSError:
                time.sleep(0.05)
        yield f"{base}/blux", f"{base}/nachocode"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def sandbox_counts(blux_base: str) -> dict[str, Any]:
    """The request counters of a sandbox process (not its mirror: that may be huge)."""
    import urllib.request

    base = blux_base.rsplit("/blux", 1)[0]
    with urllib.request.urlopen(f"{base}/_sandbox/counts", timeout=30) as answer:
        counts: dict[str, Any] = json.loads(answer.read())
    return counts
