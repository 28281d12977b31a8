"""Failure modes that must not lose, duplicate, block or flood anything."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from syncer.errors import SourceError
from syncer.pipeline import Runtime, run_pass
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, mock_transport
from syncer.source import Source

from .conftest import create_users_table, execute, insert_users, make_config, user_row
from .test_pipeline import once, requests


def sqlite_source(tmp_path: Path, rows: list[dict[str, Any]], key_type: str = "BIGINT") -> str:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src, key_type=key_type)
    insert_users(src, rows)
    return src


def test_keys_that_trim_to_one_user_are_reported_and_never_hang_a_pass(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    rows = [user_row(i, id=f"k{i:04d}") for i in range(300)]
    rows.append(user_row(999, id=" k0150"))   # the same user id once trimmed, another chunk
    src = sqlite_source(tmp_path, rows, key_type="VARCHAR(20)")
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}", source={"chunk_size": 100})
    result = once(config, sandbox_app)
    assert result.counts["invalid_keys"] == 1     # reported by key
    assert result.counts["updated"] == 300        # each user id sent once
    assert len(sandbox_app.snapshot()["users"]) == 300
    assert result.outcome == "partial"


def test_held_withdrawals_never_pile_up_into_the_safety_valve(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 201)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).outcome == "ok"
    sandbox_app.faults.nachocode_disabled = True
    for day in range(4):   # 8 deletions and a consent withdrawal a day, nachocode refusing
        first = 1 + day * 8
        execute(src, f"DELETE FROM users WHERE id BETWEEN {first} AND {first + 7}")
        execute(src, f"UPDATE users SET marketing = 0 WHERE id = {101 + 2 * day}")
        result = once(config, sandbox_app)
        assert result.outcome == "partial", result.message   # not "valve"
        assert result.counts["deleted"] == 8 and result.counts["updated"] == 1
    sandbox_app.faults.nachocode_disabled = False
    caught_up = once(config, sandbox_app)
    assert caught_up.outcome == "ok" and caught_up.counts["withdrawn"] == 32


@pytest.mark.parametrize("status, endpoint", [(405, "nachocode"), (301, "blux"), (415, "blux")])
def test_an_endpoint_that_refuses_everything_quarantines_nobody(
        tmp_path: Path, sandbox_app: SandboxApp, status: int, endpoint: str) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 31)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).outcome == "ok"
    execute(src, "DELETE FROM users WHERE id <= 10")
    inner = mock_transport(sandbox_app)

    def broken(request: httpx.Request) -> httpx.Response:
        if f"/{endpoint}/" in str(request.url):
            return httpx.Response(status, headers={"Location": "https://elsewhere/"},
                                  request=request)
        return inner.handle_request(request)

    rt = Runtime(config, transport=httpx.MockTransport(broken))
    try:
        refused = run_pass(rt)
    finally:
        rt.close()
    assert refused.outcome == "partial" and refused.counts.get("quarantined", 0) == 0
    assert "nothing is quarantined" in (refused.message or "")
    fixed = once(config, sandbox_app)   # the configuration is fixed: everything goes
    assert fixed.outcome == "ok"
    snap = sandbox_app.snapshot()
    assert len(snap["users"]) == 20 and len(snap["withdrawn_user_ids"]) == 10


def test_back_to_back_passes_stay_within_the_rate(tmp_path: Path) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 3)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}", fast=False)
    app = SandboxApp(SandboxConfig(), Faults())
    rt = Runtime(config, transport=mock_transport(app))
    try:
        run_pass(rt)
        for n in range(30):   # thirty passes, one request each, as fast as they can go
            execute(src, f"UPDATE users SET name = 'n{n}' WHERE id = 1")
            assert run_pass(rt).counts["updated"] == 1
    finally:
        rt.close()
    assert app.snapshot()["max_requests_in_window"]["blux.update"] <= 20


class FailingSource(Source):
    """A source whose fourth read fails (the database went away mid-pass)."""

    reads = 0

    def read(self, keys: Any, *, values: bool = True) -> Any:
        if values:
            FailingSource.reads += 1
            if FailingSource.reads == 4:
                raise SourceError("connection lost")
        return super().read(keys, values=values)


def test_what_was_delivered_before_a_failure_is_recorded(tmp_path: Path,
                                                         sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 1001)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}", source={"chunk_size": 100})
    probe = Runtime(config)
    source = FailingSource(config.source, config.capture, probe.mapping.columns,
                           probe.mapping.row_hash_seed())
    probe.close()
    rt = Runtime(config, source=source, transport=mock_transport(sandbox_app))
    try:
        failed = run_pass(rt)
    finally:
        rt.close()
    assert failed.outcome == "failed"
    sent_before = failed.counts.get("updated", 0)
    assert sent_before >= 300
    again = once(config, sandbox_app)
    assert again.outcome == "ok"
    assert again.counts["updated"] == 1000 - sent_before   # nothing delivered is sent twice


def test_status_text_in_the_soft_delete_column_deletes_nobody(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i, deleted_at="active") for i in range(1, 21)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"initial_deletions": "send"})
    result = once(config, sandbox_app)
    assert result.outcome == "ok" and result.counts["updated"] == 20
    assert "deleted" not in result.counts and "withdrawn" not in result.counts


def test_numeric_and_domain_keys_on_postgres(pg_url: str, tmp_path: Path,
                                             sandbox_app: SandboxApp) -> None:
    execute(pg_url, "CREATE DOMAIN uid AS bigint")
    execute(pg_url, "CREATE TABLE users (id uid PRIMARY KEY, name text, phone text, email text,"
                    " marketing int, sms text, points numeric, touched text, deleted_at text)")
    insert_users(pg_url, [user_row(i) for i in range(1, 41)])
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).counts["updated"] == 40
    execute(pg_url, "DELETE FROM users WHERE id = 3")
    second = once(config, sandbox_app)
    assert second.counts["deleted"] == 1 and requests(second)["blux.delete"] == 1
    execute(pg_url, "ALTER TABLE users ALTER COLUMN id TYPE numeric")
    assert requests(once(config, sandbox_app)) == {}   # same users, nothing to send


def test_null_consents_can_be_sent_as_false(tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i, marketing=1) for i in range(1, 4)])
    omit = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(omit, sandbox_app).counts["updated"] == 3
    execute(src, "UPDATE users SET marketing = NULL WHERE id = 1")
    cleared = once(omit, sandbox_app)
    assert cleared.counts["consents_cleared"] == 1     # reported: Blux keeps true
    user = sandbox_app.snapshot()["users"]["1"]["user_properties"]
    assert user["marketing_notification_consent"] is True
    strict = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         mapping={"null_consents": "false"})
    assert once(strict, sandbox_app).counts["updated"] >= 1
    user = sandbox_app.snapshot()["users"]["1"]["user_properties"]
    assert user["marketing_notification_consent"] is False
