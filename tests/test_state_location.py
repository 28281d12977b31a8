"""Which state a command works on: SQLite paths relative to the config file, read-only commands
that create no state, and a new state refused where the outbox shows an earlier one delivered."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncer import commands
from syncer.config import Config, load
from syncer.sandbox import SandboxApp, mock_transport

from .conftest import MAPPING_TOML, SANDBOX, create_users_table, insert_users, user_row


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
