"""Whole passes in-process: a real source (SQLite or PostgreSQL), the SQLite state, and the sandbox
through httpx.MockTransport."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncer import commands
from syncer.model import Endpoint
from syncer.pipeline import plan_pass
from syncer.results import PassKind
from syncer.runtime import Runtime
from syncer.sandbox import SandboxApp, mock_transport

from .helpers import (
    assert_mirror_matches,
    create_users_table,
    execute,
    insert_users,
    make_config,
    once,
    requests,
    user_row,
)


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_three_passes_first_load_changes_then_nothing(source_url: str, tmp_path: Path,
                                                      sandbox_app: SandboxApp) -> None:
    src = source_url
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 1201)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")

    first = once(config, sandbox_app)
    assert first.outcome == "ok", first.message
    assert first.counts["updated"] == 1200
    assert requests(first) == {"blux.update": 12}
    assert_mirror_matches(sandbox_app, src)

    execute(src, "UPDATE users SET name = 'renamed' WHERE id IN (1, 2, 3)")
    execute(src, "UPDATE users SET marketing = 0 WHERE id IN (11, 13)")        # withdrawal
    execute(src, "UPDATE users SET touched = 'again' WHERE id BETWEEN 100 AND 400")  # unmapped
    execute(src, "UPDATE users SET phone = '+82 10-1010-2010' WHERE id = 10")  # same number
    execute(src, "UPDATE users SET deleted_at = '2026-11-27' WHERE id IN (20, 21)")
    execute(src, "DELETE FROM users WHERE id IN (30, 31, 32)")
    insert_users(src, [user_row(i) for i in range(5000, 5004)])

    second = once(config, sandbox_app)
    assert second.outcome == "ok", second.message
    assert second.counts["updated"] == 3 + 2 + 4
    assert second.counts["deleted"] == 5 and second.counts["withdrawn"] == 5
    assert second.counts["unchanged"] == 1          # the reformatted phone number
    assert requests(second) == {"blux.update": 1, "blux.delete": 1, "nachocode.withdraw": 5}
    assert_mirror_matches(sandbox_app, src)
    snap = sandbox_app.snapshot()
    assert set(snap["withdrawn_user_ids"]) == {"20", "21", "30", "31", "32"}

    third = once(config, sandbox_app)
    assert third.outcome == "ok"
    assert requests(third) == {}
    assert third.counts.get("candidates", 0) == 0


def test_safety_valve_stops_a_mass_deletion_until_confirmed(tmp_path: Path,
                                                           sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 401)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).outcome == "ok"
    execute(src, "DELETE FROM users WHERE id > 100")   # a truncated table, say

    tripped = once(config, sandbox_app)
    assert tripped.outcome == "valve" and tripped.exit_code == 1
    assert "at least 21 of 400" in (tripped.message or "")
    assert requests(tripped) == {}
    assert len(sandbox_app.snapshot()["users"]) == 400

    confirmed = once(config, sandbox_app, confirm=True)
    assert confirmed.outcome == "ok" and confirmed.counts["deleted"] == 300
    assert_mirror_matches(sandbox_app, src)


def test_wrong_credentials_stop_quickly_and_lose_nothing(tmp_path: Path,
                                                        sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 3001)])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    bad = make_config(src, state, blux={"secret_key": "not-the-key", "max_in_flight": 4})
    result = once(bad, sandbox_app)
    assert result.outcome == "credentials" and result.exit_code == 3
    assert "blux" in result.credentials
    assert sum(requests(result).values()) <= 4
    assert sandbox_app.snapshot()["users"] == {}
    good = make_config(src, state)
    again = once(good, sandbox_app)
    assert again.outcome == "ok" and again.counts["updated"] == 3000
    assert_mirror_matches(sandbox_app, src)


def test_poison_user_is_quarantined_and_retried_only_when_it_changes(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 301)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    sandbox_app.faults.reject_user_ids = frozenset({"42"})
    first = once(config, sandbox_app)
    assert first.outcome == "partial" and first.exit_code == 1
    assert first.counts["quarantined"] == 1 and first.counts["updated"] == 299
    status = commands.status(config)
    assert [(q.user_id, q.destination) for q in status.quarantined] == [("42", "blux")]
    assert "400" in status.quarantined[0].reason

    second = once(config, sandbox_app)
    assert second.outcome == "ok" and requests(second) == {}   # not retried: nothing changed

    sandbox_app.faults.reject_user_ids = frozenset()
    execute(src, "UPDATE users SET name = 'fixed' WHERE id = 42")
    third = once(config, sandbox_app)
    assert third.outcome == "ok" and third.counts["updated"] == 1
    assert commands.status(config).quarantined == []
    assert_mirror_matches(sandbox_app, src)


def test_nachocode_403_holds_withdrawals_and_sends_them_once_enabled(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 101)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).outcome == "ok"
    sandbox_app.faults.nachocode_disabled = True
    execute(src, "DELETE FROM users WHERE id IN (1, 2, 3)")
    held = once(config, sandbox_app)
    assert held.outcome == "partial"
    assert held.counts["deleted"] == 3 and held.counts.get("withdrawn", 0) == 0
    assert "ERR-AB-ACS-21" in held.held[str(Endpoint.NACHOCODE_WITHDRAW)]
    assert commands.status(config).destinations["nachocode"].startswith("held back")
    sandbox_app.faults.nachocode_disabled = False
    later = once(config, sandbox_app)
    assert later.outcome == "ok"
    assert later.counts["withdrawn"] == 3 and later.counts.get("deleted", 0) == 0
    assert set(sandbox_app.snapshot()["withdrawn_user_ids"]) == {"1", "2", "3"}


def test_plan_sends_and_records_nothing(tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 251)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    rt = Runtime(config, transport=mock_transport(sandbox_app))
    try:
        result = plan_pass(rt)
    finally:
        rt.close()
    assert result.outcome == "dry-run" and result.plan is not None
    assert result.plan.ops == {"blux.update": 250}
    assert result.plan.calls[Endpoint.BLUX_UPDATE] == 3
    assert result.plan.estimated_seconds == pytest.approx(3 / 1000)
    sample = result.plan.samples[0]
    assert sample.reason == "new" and sample.fields["custom.name"] == "user 1"
    assert sandbox_app.snapshot()["requests"]["blux.update"]["total"] == 0
    assert commands.status(config).passes == []
    assert once(config, sandbox_app).counts["updated"] == 250
    execute(src, "UPDATE users SET sms = 'N', name = 'x' WHERE id = 7")
    rt = Runtime(config)
    try:
        (sample,) = plan_pass(rt).plan.samples  # type: ignore[union-attr]
    finally:
        rt.close()
    assert sample.user_id == "7"
    assert sample.fields == {"custom.name": "x", "marketing_notification_sms_consent": False}


def test_bad_rows_cost_only_themselves(tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src, key_type="VARCHAR(20)")
    rows = [user_row(i, id=f"u{i}") for i in range(1, 51)]
    rows[3]["phone"] = "not a phone"
    rows[4]["email"] = "nope"
    rows[5]["id"] = "   "          # an empty key once trimmed
    insert_users(src, rows)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    result = once(config, sandbox_app)
    assert result.counts["updated"] == 49
    assert result.counts["invalid_keys"] == 1 and result.counts["field_problems"] == 2
    assert result.outcome == "partial"
    users = sandbox_app.snapshot()["users"]
    assert "phone_number" not in users["u4"]["user_properties"]
    assert users["u4"]["custom_user_properties"]["name"] == "user 4"
    problems = {(p.user_id, p.field) for p in commands.status(config).problems}
    assert problems == {("u4", "phone_number"), ("u5", "email_address")}


@pytest.mark.parametrize("policy", ["skip", "send"])
def test_rows_deleted_before_the_first_pass(tmp_path: Path, sandbox_app: SandboxApp,
                                            policy: str) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i, deleted_at="2020-01-01" if i <= 30 else None)
                       for i in range(1, 101)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"initial_deletions": policy})
    first = once(config, sandbox_app)
    if policy == "send":
        # irreversible withdrawals of users syncer never saw: the safety valve wants a person
        assert first.outcome == "valve" and requests(first) == {}
        first = once(config, sandbox_app, confirm=True)
    assert first.outcome == "ok" and first.counts["updated"] == 70
    if policy == "skip":
        assert first.counts["deleted_before_first_pass"] == 30
        assert requests(first) == {"blux.update": 1}
    else:
        assert first.counts["deleted"] == 30 and first.counts["withdrawn"] == 30
    # history is recorded once: later passes neither send it nor count it again
    again = once(config, sandbox_app)
    assert requests(again) == {} and "deleted_before_first_pass" not in again.counts
    # after the first pass, a row that shows up already deleted was never seen alive: it is
    # nobody syncer knows, so nothing irreversible is sent for it; it is reported instead
    insert_users(src, [user_row(500, deleted_at="2026-11-27")])
    later = once(config, sandbox_app)
    assert requests(later) == {} and later.counts["deletions_not_sent"] == 1
    assert "500" not in sandbox_app.snapshot()["withdrawn_user_ids"]
    # and a user seen alive, then deleted, is deleted and withdrawn as always
    execute(src, "UPDATE users SET deleted_at = '2026-12-01' WHERE id = 40")
    deleted = once(config, sandbox_app)
    assert deleted.counts["deleted"] == 1 and deleted.counts["withdrawn"] == 1


def test_the_state_alone_reveals_no_personal_data(tmp_path: Path,
                                                  sandbox_app: SandboxApp) -> None:
    """The state holds keyed hashes; the key lives in a file outside it (0600)."""
    import os
    import sqlite3

    from syncer.errors import ConfigError

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 51)])
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = make_config(src, f"sqlite:///{state_dir / 'state.db'}")
    assert once(config, sandbox_app).counts["updated"] == 50
    key_file = state_dir / "fingerprint.key"
    assert oct(os.stat(key_file).st_mode & 0o777) == "0o600"
    dump = "\n".join(sqlite3.connect(state_dir / "state.db").iterdump())
    for row in (user_row(i) for i in range(1, 51)):
        digits = "".join(ch for ch in row["phone"] if ch.isdigit())
        assert digits not in dump and row["email"] not in dump and row["name"] not in dump
    assert key_file.read_text().strip() not in dump
    # a different key is noticed, not silently used (it would re-send everyone)
    original = key_file.read_text()
    key_file.write_text("00" * 32)
    with pytest.raises(ConfigError, match="not the key this state was written with"):
        once(config, sandbox_app)
    key_file.unlink()
    with pytest.raises(ConfigError, match="is missing"):
        once(config, sandbox_app)
    key_file.write_text(original)
    assert requests(once(config, sandbox_app)) == {}


def test_a_postgres_state_needs_a_key_file(tmp_path: Path, pg_state_url: str,
                                           sandbox_app: SandboxApp) -> None:
    from syncer.errors import ConfigError

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 11)])
    with pytest.raises(ConfigError, match="key_file is needed"):
        once(make_config(src, pg_state_url), sandbox_app)
    config = make_config(src, pg_state_url, state={"key_file": str(tmp_path / "k" / "fp.key")})
    assert once(config, sandbox_app).counts["updated"] == 10
    assert requests(once(config, sandbox_app)) == {}


def test_each_pass_keeps_the_pass_history_within_keep_passes(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    import datetime as dt

    from syncer.state.sql import SqlStateStore

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 6)])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = make_config(src, state, state={"keep_passes": 100})
    assert config.state.keep_passes == 100
    assert make_config(src, state).state.keep_passes == 10_000
    assert once(config, sandbox_app).outcome == "ok"
    store = SqlStateStore.from_url(state)
    try:
        for _ in range(150):   # a busy history
            store.passes.start(PassKind.INCREMENTAL, "snapshot", dt.datetime(2026, 1, 1), "h:1")
        last = once(config, sandbox_app)
        passes = store.passes.recent(1000)
    finally:
        store.close()
    assert len(passes) == 100 and passes[0].id == last.pass_id
