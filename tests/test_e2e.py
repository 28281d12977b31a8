"""End to end: `syncer once` as a user runs it, against a real PostgreSQL source and the sandbox
over real HTTP with the documented rate limits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from syncer.sandbox import Faults, SandboxApp, SandboxServer

from .helpers import (
    MAPPING_TOML,
    SANDBOX,
    app_users,
    create_users_table,
    execute,
    expected_blux,
    insert_users,
    user_row,
)

RATES = {"blux.update": 20, "blux.delete": 100, "nachocode.withdraw": 10}


def write_config(tmp_path: Path, source_url: str, server: SandboxServer, *,
                 secret: str = SANDBOX.blux_secret_key, timeout: float = 10.0) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[source]
url = "{source_url}"
table = "users"
primary_key = "id"

[capture]
mode = "snapshot"
soft_delete_column = "deleted_at"

[state]
url = "sqlite:///{tmp_path / 'state.db'}"

{MAPPING_TOML}
[blux]
base_url = "{server.blux_base_url}"
application_id = "{SANDBOX.blux_application_id}"
secret_key = "${{TEST_BLUX_SECRET}}"
timeout_seconds = {timeout}

[nachocode]
base_url = "{server.nachocode_base_url}"
api_key = "{SANDBOX.nachocode_api_key}"
secret_key_file = "nacho.secret"
timeout_seconds = {timeout}

[delivery]
max_attempts = 8
backoff_initial_seconds = 0.05
backoff_max_seconds = 0.5
""")
    (tmp_path / "nacho.secret").write_text(SANDBOX.nachocode_secret_key + "\n")
    (tmp_path / "blux.secret").write_text(secret)
    return path


def syncer(*args: str, env_secret: str = SANDBOX.blux_secret_key,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, TEST_BLUX_SECRET=env_secret)
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def check_mirror(app: SandboxApp, source_url: str) -> None:
    snap: dict[str, Any] = app.snapshot()
    live = app_users(source_url)
    assert set(snap["users"]) == set(live)
    mismatched = [uid for uid, row in live.items() if snap["users"][uid] != expected_blux(row)]
    assert mismatched == []


def check_rates(app: SandboxApp) -> None:
    busiest = app.snapshot()["max_requests_in_window"]
    for endpoint, limit in RATES.items():
        assert busiest[endpoint] <= limit, (endpoint, busiest[endpoint])


@pytest.mark.slow
def test_syncer_once_makes_blux_equal_to_postgres_and_then_sends_only_changes(
        tmp_path: Path, pg_url: str) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 20_001)])
    app = SandboxApp(SANDBOX, Faults(seed=11))
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server)
        first = syncer("once", "-c", str(config))
        assert first.returncode == 0, first.stderr
        check_mirror(app, pg_url)
        assert app.snapshot()["requests"]["blux.update"]["total"] == 200

        execute(pg_url, "UPDATE users SET name = 'changed' WHERE id % 1000 = 1")       # 20
        execute(pg_url, "UPDATE users SET marketing = 0 WHERE id IN (2, 4, 6)")        # 3
        execute(pg_url, "UPDATE users SET touched = 'x' WHERE id % 10 = 5")            # 2000
        execute(pg_url, "UPDATE users SET deleted_at = '2026-11-27' WHERE id IN (7, 8)")
        execute(pg_url, "DELETE FROM users WHERE id IN (9, 10, 11)")
        insert_users(pg_url, [user_row(i) for i in range(30_001, 30_011)])
        before = {k: v["total"] for k, v in app.snapshot()["requests"].items()}
        second = syncer("once", "-c", str(config), "--log-level", "WARNING")
        assert second.returncode == 0, second.stderr
        after = {k: v["total"] for k, v in app.snapshot()["requests"].items()}
        assert {k: after[k] - before[k] for k in after} == {
            "blux.update": 1, "blux.delete": 1, "nachocode.withdraw": 5}
        assert "updated" in second.stdout
        check_mirror(app, pg_url)
        assert set(app.snapshot()["withdrawn_user_ids"]) == {"7", "8", "9", "10", "11"}

        third = syncer("once", "-c", str(config))
        assert third.returncode == 0
        assert {k: v["total"] for k, v in app.snapshot()["requests"].items()} == after
        assert "0 API calls" in third.stdout
        check_rates(app)

        status = syncer("status", "-c", str(config))
        assert status.returncode == 0 and "recent passes" in status.stdout


@pytest.mark.slow
def test_a_pass_delivers_everything_through_5xx_and_hangs_within_the_rates(
        tmp_path: Path, pg_url: str) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 10_001)])
    app = SandboxApp(SANDBOX, Faults(seed=5, error_rate=0.15, hang_rate=0.03, hang_seconds=30))
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server, timeout=0.5)
        execute(pg_url, "SELECT 1")
        result = syncer("once", "-c", str(config))
        assert result.returncode == 0, result.stdout + result.stderr
        check_mirror(app, pg_url)
        execute(pg_url, "DELETE FROM users WHERE id <= 200")
        deleted = syncer("once", "-c", str(config))
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        check_mirror(app, pg_url)
        snap = app.snapshot()
        assert len(snap["withdrawn_user_ids"]) == 200
        assert snap["requests"]["blux.update"]["by_status"].get("500", 0) > 0
        check_rates(app)


def test_exit_codes_and_messages(tmp_path: Path, pg_url: str) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 51)])
    app = SandboxApp(SANDBOX, Faults(seed=1))
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server)
        wrong = syncer("once", "-c", str(config), env_secret="wrong-secret-value")
        assert wrong.returncode == 3
        assert "check [blux] secret_key" in wrong.stdout
        assert "wrong-secret-value" not in wrong.stdout + wrong.stderr
        assert app.snapshot()["requests"]["blux.update"]["total"] <= 20
        ok = syncer("once", "-c", str(config))
        assert ok.returncode == 0

    broken = tmp_path / "broken.toml"
    broken.write_text('[source]\nurl = "sqlite://"\n[blux]\napplication_id = 1\n')
    bad = syncer("once", "-c", str(broken))
    assert bad.returncode == 2
    assert "[blux] secret_key is missing" in bad.stderr and str(broken) in bad.stderr
    usage = syncer("once", "--no-such-flag")
    assert usage.returncode == 2
    missing = syncer("plan", "-c", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


def test_plan_and_migrate_from_the_command_line(tmp_path: Path, pg_url: str) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 301)])
    app = SandboxApp(SANDBOX, Faults(seed=1))
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server)
        migrated = syncer("migrate", "-c", str(config), "--log-level", "debug")
        assert migrated.returncode == 0 and "up to date" in migrated.stdout
        plan = syncer("plan", "-c", str(config))
        assert plan.returncode == 0, plan.stderr
        assert "blux.update" in plan.stdout and "300" in plan.stdout
        assert app.snapshot()["requests"]["blux.update"]["total"] == 0
        logged = [json.loads(line) for line in plan.stderr.splitlines() if line.startswith("{")]
        assert any(entry["event"] == "pass.completed" for entry in logged)
