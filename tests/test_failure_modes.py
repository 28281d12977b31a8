"""Failure modes that must not lose, duplicate, block or flood anything."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from syncer.configfile import load
from syncer.errors import SourceError, SyncerError
from syncer.model import Endpoint
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, mock_transport
from syncer.source import Source

from .helpers import (
    MAPPING_TOML,
    SANDBOX,
    create_users_table,
    execute,
    free_port,
    insert_users,
    make_config,
    once,
    requests,
    sqlite_source,
    user_row,
)


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
                           probe.row_hash_seed)
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


class FlakyLedger:
    """A ledger whose writes fail while ``down`` (a database restart, a locked file)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = 0   # how many writes fail next

    def write(self, writes: Any, now: Any) -> None:
        if self.down:
            self.down -= 1
            from syncer.errors import StateError
            raise StateError("state database (write): connection lost")
        self.inner.write(writes, now)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class FlakyState:
    """A state whose ledger writes fail while ``down``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.ledger = FlakyLedger(inner.ledger)

    @property
    def down(self) -> int:
        return self.ledger.down

    @down.setter
    def down(self, value: int) -> None:
        self.ledger.down = value

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_failed_state_write_keeps_its_rows_for_the_next_attempt(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer.state.sql import SqlStateStore

    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 301)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    state = FlakyState(SqlStateStore.from_url(config.state.url))
    state.down = 1                      # the recorder's first write fails, later ones succeed
    rt = Runtime(config, state=state, transport=mock_transport(sandbox_app))
    try:
        first = run_pass(rt)
        assert first.outcome == "ok" and first.counts["updated"] == 300
        assert requests(run_pass(rt)) == {}     # everything was recorded: nothing again
        execute(src, "UPDATE users SET name = 'n' WHERE id <= 5")
        state.down = 10**6                  # the state stays down for the whole pass
        down = run_pass(rt)
        assert down.outcome == "failed" and "connection lost" in (down.message or "")
        state.down = 0
        again = run_pass(rt)                # what failed to be recorded is sent again
        assert again.outcome == "ok" and again.counts["updated"] == 5
    finally:
        rt.close()


def test_outbox_rows_stay_when_the_state_could_not_record_the_pass(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer.capture import outbox_ddl as ob
    from syncer.state.sql import SqlStateStore

    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 11)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}", capture={"mode": "outbox"})
    ob.install(config)
    state = FlakyState(SqlStateStore.from_url(config.state.url))
    rt = Runtime(config, state=state, transport=mock_transport(sandbox_app))
    try:
        run_pass(rt)
        run_pass(rt)
        execute(src, "UPDATE users SET marketing = 0 WHERE id = 3")
        state.down = 10**6
        assert run_pass(rt).outcome == "failed"
        state.down = 0
        later = run_pass(rt)                # the outbox row was kept: the change is not lost
        assert later.counts["updated"] == 1
    finally:
        rt.close()


def test_operator_requests_beside_a_running_sender_wait_for_it(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer import commands
    from syncer import lock as sender_lock

    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 21)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    once(config, sandbox_app)
    daemon_lock = sender_lock.for_config(config, "the-daemon:1")
    assert daemon_lock.acquire()
    try:
        queued = commands.resync(config, ["3", "4"], transport=mock_transport(sandbox_app))
        assert queued.sender == "the-daemon:1" and queued.result is None
        with pytest.raises(SyncerError, match="stop it before replacing the key"):
            commands.resync(config, new_key=True)
    finally:
        daemon_lock.release()
    # the sender applies the request at its next pass
    applied = once(config, sandbox_app)
    assert applied.counts["updated"] == 2


def test_soft_deleted_users_that_are_then_purged_leave_the_ranges_quiet(
        pg_url: str, tmp_path: Path, sandbox_app: SandboxApp,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from syncer.capture import snapshot

    monkeypatch.setattr(snapshot, "BLOCK", 10)
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 101)])
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}")
    once(config, sandbox_app)
    execute(pg_url, "UPDATE users SET deleted_at = '2026-11-27' WHERE id = 55")
    assert once(config, sandbox_app).counts["deleted"] == 1
    execute(pg_url, "DELETE FROM users WHERE id = 55")       # purged later
    once(config, sandbox_app)
    quiet = once(config, sandbox_app)
    assert quiet.position["ranges_read_row_by_row"] == 0


def test_a_quarantined_deletion_is_retried_by_the_reconcile(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 21)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"})
    from syncer.capture import outbox_ddl as ob

    ob.install(config)
    once(config, sandbox_app)
    sandbox_app.faults.reject_user_ids = frozenset({"7"})
    execute(src, "DELETE FROM users WHERE id = 7")
    held = once(config, sandbox_app)
    assert held.counts["quarantined"] == 2            # Blux delete and nachocode withdraw
    assert requests(once(config, sandbox_app)) == {}  # an ordinary pass leaves it waiting
    sandbox_app.faults.reject_user_ids = frozenset()
    retried = once(config, sandbox_app, reconcile=True)
    assert retried.counts["deleted"] == 1 and retried.counts["withdrawn"] == 1


def test_adding_blux_later_sends_the_existing_users(tmp_path: Path,
                                                    sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 31)])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    nacho_only = make_config(src, state)
    raw = nacho_only.model_dump(by_alias=True, exclude_none=True)
    raw.pop("blux")
    raw["nachocode"]["api_key"] = nacho_only.nachocode.api_key.reveal()  # type: ignore[union-attr]
    raw["nachocode"]["secret_key"] = nacho_only.nachocode.secret_key.reveal()  # type: ignore[union-attr]
    from syncer.configfile import parse

    first = once(parse(raw), sandbox_app)
    assert first.outcome == "ok" and requests(first) == {}
    with_blux = once(nacho_only, sandbox_app)     # the same state, Blux configured now
    assert with_blux.counts["updated"] == 30


def test_null_keys_from_a_query_are_reported_on_every_database(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in range(1, 21)])
    config = make_config(source_url, f"sqlite:///{tmp_path / 'state.db'}", source={
        "table": None, "query": "SELECT u.* FROM users u UNION ALL SELECT NULL, name, phone, "
                                "email, marketing, sms, points, touched, deleted_at FROM users "
                                "WHERE id = 1"})
    first = once(config, sandbox_app)
    assert first.counts["updated"] == 20 and first.counts["invalid_keys"] == 1
    second = once(config, sandbox_app)               # not a crash, the same report
    assert second.counts["invalid_keys"] == 1 and requests(second) == {}


def test_the_lag_counts_from_the_first_failure(tmp_path: Path) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 4)])
    app = SandboxApp(SandboxConfig(update_rate=1000), Faults(error_rate=1.0))
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    rt = Runtime(config, transport=mock_transport(app))
    try:
        run_pass(rt)
        count, first = rt.state.ledger.pending()
        assert count == 3 and first is not None
        run_pass(rt)
        assert rt.state.ledger.pending() == (3, first)   # still waiting since the first failure
        app.faults.error_rate = 0.0
        run_pass(rt)
        assert rt.state.ledger.pending() == (0, None)
    finally:
        rt.close()


UNREACHABLE_TOML = """
[source]
url = "{src}"
table = "users"

[capture]
soft_delete_column = "deleted_at"

[state]
url = "sqlite:///{state}"

{mapping}
[blux]
base_url = "http://127.0.0.1:{blux_port}/prod"
application_id = "{app_id}"
secret_key = "{blux_secret}"

[nachocode]
base_url = "http://127.0.0.1:{nacho_port}"
api_key = "{nacho_key}"
secret_key = "{nacho_secret}"

[delivery]
max_attempts = 2
backoff_initial_seconds = 0.001
backoff_max_seconds = 0.01
"""


def test_an_unreachable_api_names_its_url_and_the_key_to_check(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    rows = [user_row(i, email=f"person{i}@private.example") for i in range(1, 11)]
    src = sqlite_source(tmp_path, rows)
    blux_port, nacho_port = free_port(), free_port()   # nothing listens on either
    toml = tmp_path / "config.toml"
    toml.write_text(UNREACHABLE_TOML.format(
        src=src, state=tmp_path / "state.db", mapping=MAPPING_TOML, blux_port=blux_port,
        nacho_port=nacho_port, app_id=SANDBOX.blux_application_id,
        blux_secret=SANDBOX.blux_secret_key, nacho_key=SANDBOX.nachocode_api_key,
        nacho_secret=SANDBOX.nachocode_secret_key))
    config = load(toml)
    working = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(working, sandbox_app).outcome == "ok"    # delivered once; then both APIs go away
    execute(src, "DELETE FROM users WHERE id = 3")
    execute(src, "UPDATE users SET name = 'changed' WHERE id = 4")

    rt = Runtime(config)   # real HTTP to the closed ports
    try:
        result = run_pass(rt)
    finally:
        rt.close()
    assert result.outcome == "partial"
    message = result.message or ""
    for expected in (f"http://127.0.0.1:{blux_port}", "connection refused",
                     "check [blux] base_url", f"http://127.0.0.1:{nacho_port}",
                     "check [nachocode] base_url"):
        assert expected in message, (expected, message)
    assert "/prod" not in message and SANDBOX.blux_application_id not in message
    assert "private.example" not in message and "user 4" not in message

    cli = subprocess.run([sys.executable, "-m", "syncer", "once", "-c", str(toml)],
                         capture_output=True, text=True, timeout=300, check=False)
    assert cli.returncode == 1, cli.stdout + cli.stderr
    shown = " ".join(cli.stdout.split())
    assert f"http://127.0.0.1:{blux_port}" in shown and "check [blux] base_url" in shown, shown
    assert "check [nachocode] base_url" in shown, shown
    assert "private.example" not in cli.stdout + cli.stderr


def test_a_server_is_named_by_scheme_host_and_port_only() -> None:
    from syncer.destinations import origin

    assert origin("http://user:pw@api.example.com:8080/prod/v2?key=k") == \
        "http://api.example.com:8080"
    assert origin("https://api.blux.ai/prod/v2/applications/app-1") == "https://api.blux.ai:443"
    assert origin("http://[::1]:8089/blux") == "http://[::1]:8089"


def test_a_nachocode_404_about_one_user_quarantines_that_user_only(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 11)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    assert once(config, sandbox_app).outcome == "ok"
    execute(src, "DELETE FROM users WHERE id <= 4")
    inner = mock_transport(sandbox_app)

    def unknown_user_3(request: httpx.Request) -> httpx.Response:
        if "/api/app-user/" in str(request.url) and b'"3"' in request.read():
            return httpx.Response(404, json={"statusCode": 404, "path": "/api/app-user/v2",
                                             "code": "ERR-AB-USR-14",
                                             "message": "User not found."}, request=request)
        return inner.handle_request(request)

    rt = Runtime(config, transport=httpx.MockTransport(unknown_user_3))
    try:
        result = run_pass(rt)
    finally:
        rt.close()
    assert result.outcome == "partial" and result.exit_code == 1 and not result.credentials
    assert result.counts["withdrawn"] == 3 and result.counts["deleted"] == 4
    assert result.counts.quarantined[Endpoint.NACHOCODE_WITHDRAW] == 1
    from syncer import commands

    (row,) = commands.status(config).quarantined
    assert (row.user_id, row.destination) == ("3", "nachocode")
    assert "ERR-AB-USR-14" in row.reason


def test_a_wrong_nachocode_base_url_is_not_read_as_bad_keys(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = sqlite_source(tmp_path, [user_row(i) for i in range(1, 11)])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    assert once(make_config(src, state), sandbox_app).outcome == "ok"
    execute(src, "DELETE FROM users WHERE id <= 4")
    wrong = make_config(src, state, nachocode={"base_url": "http://sandbox/nacho"})
    result = once(wrong, sandbox_app)   # the sandbox answers 404 "no such route"
    assert result.outcome == "partial" and not result.credentials
    assert result.counts.get("quarantined", 0) == 0
    assert result.counts.pending[Endpoint.NACHOCODE_WITHDRAW] == 4
    assert "base_url" in (result.message or "")
    assert once(make_config(src, state), sandbox_app).counts["withdrawn"] == 4
