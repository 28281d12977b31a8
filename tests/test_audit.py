"""The audit trail end to end: a run that updates, withdraws consent for and deletes users
(a nachocode 410 and a refused user among them), then `syncer history` and `syncer audit` as a
compliance officer would run them, and a search for personal data in both and in the table."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from syncer.capture import outbox_ddl as ob
from syncer.cli import main
from syncer.config import Config
from syncer.configfile import load
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, mock_transport

from .helpers import (
    MAPPING_TOML,
    SANDBOX,
    Recorder,
    create_users_table,
    execute,
    insert_users,
    user_row,
)

USERS = range(1, 13)
ECHOING = "11"   # its refusal's message echoes its e-mail address: the trail must not keep it


def write_toml(tmp_path: Path, source: str, state: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[source]
url = "{source}"
table = "users"

[capture]
mode = "outbox"
soft_delete_column = "deleted_at"

[state]
url = "{state}"
key_file = "{tmp_path / 'fingerprint.key'}"

{MAPPING_TOML}
[blux]
base_url = "http://sandbox/blux"
application_id = "{SANDBOX.blux_application_id}"
secret_key = "{SANDBOX.blux_secret_key}"
update_rate = 1000
delete_rate = 1000

[nachocode]
base_url = "http://sandbox/nachocode"
api_key = "{SANDBOX.nachocode_api_key}"
secret_key = "{SANDBOX.nachocode_secret_key}"
rate = 1000

[delivery]
backoff_initial_seconds = 0.001
backoff_max_seconds = 0.01
""")
    return path


def echoing_refusal(request: httpx.Request, _n: int) -> httpx.Response | None:
    """Blux refusing one user with a message that holds its e-mail address."""
    body = json.loads(request.content)
    users = body.get("users", [])
    if any(u["user_id"] == ECHOING for u in users):
        return httpx.Response(400, json={"message": f"users[0].user_properties.email_address "
                                                    f"u{ECHOING}@example.com is not allowed"},
                              request=request)
    return None


def run(config: Config, app: SandboxApp) -> None:
    rt = Runtime(config, transport=Recorder(mock_transport(app), echoing_refusal))
    try:
        rt.check()
        run_pass(rt)
    finally:
        rt.close()


def personal_data() -> list[str]:
    """Every phone number and e-mail address of the test users, as stored and as sent."""
    found: list[str] = []
    for i in USERS:
        row = user_row(i)
        found += [row["phone"], row["phone"].replace("-", ""), row["email"]]
    return found


@pytest.fixture
def scenario(tmp_path: Path) -> tuple[Path, SandboxApp, str]:
    source = f"sqlite:///{tmp_path / 'app.db'}"
    state = f"sqlite:///{tmp_path / 'state.db'}"
    create_users_table(source)
    insert_users(source, [user_row(i) for i in USERS])
    path = write_toml(tmp_path, source, state)
    config = load(str(path))
    ob.install(config)
    app = SandboxApp(SandboxConfig(), Faults())
    run(config, app)                      # the first pass: everyone, whole
    app.faults.reject_user_ids = frozenset({"9"})
    with httpx.Client(transport=mock_transport(app)) as client:   # 7 left nachocode already
        client.request("DELETE", "http://sandbox/nachocode/api/app-user/v2", json={"userId": "7"},
                       headers={"x-api-key": SANDBOX.nachocode_api_key,
                                "x-secret-key": SANDBOX.nachocode_secret_key})
    execute(source, "UPDATE users SET name = 'renamed' WHERE id = 1")
    execute(source, "UPDATE users SET marketing = 0 WHERE id IN (3, 5)")   # withdrawals
    execute(source, "UPDATE users SET marketing = 1 WHERE id = 4")         # a consent given
    execute(source, "DELETE FROM users WHERE id IN (6, 7)")
    execute(source, "UPDATE users SET name = 'refused' WHERE id IN (9, 11)")
    run(config, app)
    return path, app, state


def cli(path: Path, *args: str) -> Any:
    return CliRunner().invoke(main, ["-c", str(path), *args])


def test_history_shows_each_users_timeline(scenario: tuple[Path, SandboxApp, str]) -> None:
    path, _, _ = scenario
    shown = json.loads(cli(path, "history", "3", "--json").output)["entries"]
    assert [(e["operation"], e["result"], e["all_fields"]) for e in shown] == [
        ("update", "delivered", True), ("update", "delivered", False)]
    withdrawal = shown[1]
    assert withdrawal["fields"] == ["marketing_notification_consent"]
    assert withdrawal["consents"] == {"marketing_notification_consent": False}
    assert withdrawal["committed_at"] <= withdrawal["sent_at"] <= withdrawal["acked_at"]
    assert shown[0]["pass_id"] < withdrawal["pass_id"]

    deleted = json.loads(cli(path, "history", "7", "--json").output)["entries"]
    assert {(e["endpoint"], e["result"]) for e in deleted[1:]} == {
        ("blux.delete", "delivered"), ("nachocode.withdraw", "already_withdrawn")}
    only_nacho = cli(path, "history", "6", "--destination", "nachocode")
    assert only_nacho.exit_code == 0
    assert "nachocode.withdraw" in only_nacho.output and "blux" not in only_nacho.output

    refused = json.loads(cli(path, "history", "9", "--json").output)["entries"][-1]
    assert refused["result"] == "refused" and "refused" in refused["reason"]
    assert refused["fields"] == ["custom.name"]
    assert cli(path, "history", "404").exit_code == 1


def test_audit_lists_each_withdrawal_with_both_platforms(
        scenario: tuple[Path, SandboxApp, str]) -> None:
    path, _, _ = scenario
    out = cli(path, "audit", "--kind", "withdrawals", "--format", "csv")
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    by_user = {r["user_id"]: r for r in rows}
    assert sorted(by_user) == ["3", "5", "6", "7"]
    for uid in ("3", "5"):
        assert by_user[uid]["event"] == "consent_withdrawn"
        assert by_user[uid]["consents"] == "marketing_notification_consent=false"
        assert by_user[uid]["blux_acked_at"] and not by_user[uid]["nachocode_acked_at"]
    for uid in ("6", "7"):
        row = by_user[uid]
        assert row["event"] == "deleted"
        assert row["blux_acked_at"] and row["nachocode_acked_at"], row
        assert row["committed_at"] and float(row["lag_seconds"]) >= 0
    assert by_user["7"]["nachocode_result"] == "already_withdrawn"
    assert "4 events" in out.stderr and "p95" in out.stderr

    report = json.loads(cli(path, "audit", "--format", "json").output)
    events = {(e["user_id"], e["event"]) for e in report["events"]}
    assert ("4", "consent_given") in events and ("3", "consent_withdrawn") in events
    assert report["summary"]["count"] == len(report["events"])
    assert report["summary"]["worst_lag_seconds"] >= report["summary"]["p95_lag_seconds"]
    later = json.loads(cli(path, "audit", "--since", "2999-01-01", "--format", "json").output)
    assert later["events"] == []
    assert cli(path, "audit", "--since", "yesterday").exit_code == 2


def test_no_personal_data_in_the_trail_or_its_outputs(
        scenario: tuple[Path, SandboxApp, str]) -> None:
    path, _, state = scenario
    texts = [cli(path, "history", str(i), *flags).output
             for i in USERS for flags in ((), ("--json",))]
    texts += [cli(path, "audit", "--format", fmt).output for fmt in ("csv", "json")]
    engine = sa.create_engine(state)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM syncer_history")).all()
    engine.dispose()
    texts.append(repr(rows))
    assert len(rows) == len(USERS) + 10   # everyone; 4 updates, 2 refusals, 2 deletions twice
    assert any("refused" in t for t in texts) and "u11" not in repr(rows)
    for value in personal_data():
        for text in texts:
            assert value not in text


def test_a_pass_with_nothing_changed_writes_nothing(
        scenario: tuple[Path, SandboxApp, str]) -> None:
    path, app, state = scenario

    def entries() -> int:
        engine = sa.create_engine(state)
        with engine.connect() as conn:
            n = int(conn.execute(sa.text("SELECT count(*) FROM syncer_history")).scalar_one())
        engine.dispose()
        return n

    before = entries()
    config = load(str(path))
    run(config, app)
    rt = Runtime(config, transport=mock_transport(app))
    try:
        rt.check()
        run_pass(rt, reconcile=True)
    finally:
        rt.close()
    assert entries() == before
