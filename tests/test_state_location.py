"""Which state a command works on: SQLite paths relative to the config file, read-only commands
that create no state, and a new state refused where the outbox shows an earlier one delivered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncer import commands
from syncer.capture import outbox_ddl as ob
from syncer.config import Config
from syncer.configfile import load
from syncer.daemon import Daemon
from syncer.errors import ConfigError, StateMissing
from syncer.sandbox import SandboxApp, SandboxServer, mock_transport
from syncer.sdnotify import Notifier

from .helpers import (
    MAPPING_TOML,
    SANDBOX,
    add_users,
    create_table,
    create_users_table,
    insert_users,
    make_config,
    touch,
    user_row,
)


def app_folder(tmp_path: Path, users: int = 10, *, extra: str = "") -> Path:
    """A folder holding the app database and a config that names both files relatively."""
    folder = tmp_path / "ob"
    folder.mkdir()
    create_users_table(f"sqlite:///{folder / 'app.db'}")
    insert_users(f"sqlite:///{folder / 'app.db'}", [user_row(i) for i in range(1, users + 1)])
    (folder / "config.toml").write_text(f"""
[source]
url = "sqlite:///app.db"
table = "users"

[capture]
soft_delete_column = "deleted_at"
{extra}
[state]
url = "sqlite:///state.db"

{MAPPING_TOML}
[blux]
base_url = "http://sandbox/blux"
application_id = "{SANDBOX.blux_application_id}"
secret_key = "{SANDBOX.blux_secret_key}"
""")
    return folder


def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    return other


def test_a_relative_state_is_the_same_state_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox_app: SandboxApp) -> None:
    folder = app_folder(tmp_path)
    monkeypatch.chdir(folder)
    first = commands.once(load("config.toml"), transport=mock_transport(sandbox_app))
    assert first.counts["updated"] == 10
    other = elsewhere(tmp_path, monkeypatch)
    config: Config = load("../ob/config.toml")
    assert [p.id for p in commands.status(config).passes] == [first.pass_id]
    again = commands.once(config, transport=mock_transport(sandbox_app))
    assert again.outcome == "ok" and again.counts.get("updated", 0) == 0
    assert list(other.iterdir()) == []
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith("state.db-")) == \
        ["app.db", "config.toml", "fingerprint.key", "state.db", "state.db.lock"]


def test_status_before_the_first_pass_says_so_and_creates_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = app_folder(tmp_path)
    before = sorted(folder.iterdir())
    config = load(folder / "config.toml", secrets=False)
    with pytest.raises(StateMissing, match=r"no state yet at .*ob/state.db \(no pass has run"):
        commands.status(config)
    shown = subprocess.run([sys.executable, "-m", "syncer", "status", "-c",
                            str(folder / "config.toml")], capture_output=True, text=True,
                           timeout=60, check=False)
    assert shown.returncode == 1, shown.stdout + shown.stderr
    assert f"no state yet at {folder / 'state.db'}" in shown.stdout
    assert "Traceback" not in shown.stderr
    planned = subprocess.run([sys.executable, "-m", "syncer", "plan", "-c",
                              str(folder / "config.toml")], capture_output=True, text=True,
                             timeout=60, check=False)
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert "no state yet" in planned.stdout
    assert sorted(folder.iterdir()) == before


def test_status_and_plan_create_no_postgres_state(tmp_path: Path, pg_state_url: str,
                                                  sandbox_app: SandboxApp) -> None:
    import sqlalchemy as sa

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 4)])
    config = make_config(src, pg_state_url, state={"key_file": str(tmp_path / "fp.key")})
    with pytest.raises(StateMissing, match="no state yet at postgresql"):
        commands.status(config)
    planned = commands.plan(config, transport=mock_transport(sandbox_app))
    assert planned.plan is not None and planned.plan.ops == {"blux.update": 3}
    engine = sa.create_engine(pg_state_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
    assert not (tmp_path / "fp.key").exists()
    commands.once(config, transport=mock_transport(sandbox_app))
    assert len(commands.status(config).passes) == 1


def outbox_config(url: str, state_dir: Path) -> Config:
    state_dir.mkdir(exist_ok=True)
    return make_config(url, f"sqlite:///{state_dir / 'state.db'}", capture={"mode": "outbox"})


def test_a_new_state_is_refused_where_the_outbox_was_consumed(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    create_table(source_url)
    add_users(source_url, range(1, 11))
    config = outbox_config(source_url, tmp_path / "a")
    ob.install(config)
    touch(source_url, "id = 1", "name = 'before the first pass'")   # waits in the outbox
    transport = mock_transport(sandbox_app)
    first = commands.once(config, transport=transport)   # the first pass after the install
    assert first.outcome == "ok" and first.counts["updated"] == 10
    touch(source_url, "id IN (2, 3)", "name = 'changed'")
    assert commands.once(config, transport=transport).counts["updated"] == 2   # consumes
    touch(source_url, "id = 4", "name = 'waiting'")   # the outbox holds a later row

    sent = sandbox_app.snapshot()["requests"]["blux.update"]["total"]
    for state in ("b", "c"):   # an outbox with rows, then an empty one
        other = outbox_config(source_url, tmp_path / state)
        with pytest.raises(ConfigError) as refused:
            commands.once(other, transport=transport)
        message = str(refused.value)
        assert str(tmp_path / state / "state.db") in message
        assert "new" in message and "--new-state" in message and "[state] url" in message
        assert list((tmp_path / state).iterdir()) == []   # refused before creating anything
        with pytest.raises(ConfigError, match="--new-state"):
            commands.retry(other, transport=transport)
        assert list((tmp_path / state).iterdir()) == []
        commands.once(config, transport=transport)   # the right state consumes the outbox
    assert sandbox_app.snapshot()["requests"]["blux.update"]["total"] == sent + 1
    reinstalled = outbox_config(source_url, tmp_path / "d")
    ob.install(reinstalled)   # creates the (empty) state d; the outbox keeps its counter
    with pytest.raises(ConfigError, match="--new-state"):
        commands.once(reinstalled, transport=transport)
    with pytest.raises(ConfigError, match="--new-state"):
        Daemon(reinstalled, notifier=Notifier({}))._open()
    assert sandbox_app.snapshot()["requests"]["blux.update"]["total"] == sent + 1

    other = outbox_config(source_url, tmp_path / "c")
    fresh = commands.once(other, new_state=True, transport=transport)
    assert fresh.outcome == "ok" and fresh.counts["updated"] == 10   # everyone, again
    touch(source_url, "id = 5", "name = 'after'")
    assert commands.once(other, transport=transport).counts["updated"] == 1


def test_the_cli_refuses_a_new_state_with_exit_2(tmp_path: Path,
                                                 sandbox_server: SandboxServer) -> None:
    folder = app_folder(tmp_path, extra='mode = "outbox"\n')
    text = (folder / "config.toml").read_text().replace(
        "http://sandbox/blux", sandbox_server.blux_base_url)
    (folder / "config.toml").write_text(text)
    config = load(folder / "config.toml")
    ob.install(config)
    run = [sys.executable, "-m", "syncer", "-c", str(folder / "config.toml")]
    for _ in range(2):   # the snapshot, then a pass that consumes the outbox
        touch(f"sqlite:///{folder / 'app.db'}", "id = 1", "name = 'again'", bump=False)
        assert subprocess.run([*run, "once"], capture_output=True, timeout=60,
                              check=False).returncode == 0
    (folder / "state.db").rename(folder / "old-state.db")
    refused = subprocess.run([*run, "once"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--new-state" in refused.stderr and "Traceback" not in refused.stderr
    assert not (folder / "state.db").exists()
    fresh = subprocess.run([*run, "once", "--new-state"], capture_output=True, text=True,
                           timeout=60, check=False)
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    for command in ("run", "retry", "resync"):
        shown = subprocess.run([*run, command, "--help"], capture_output=True, text=True,
                               timeout=60, check=False)
        assert "--new-state" in shown.stdout
