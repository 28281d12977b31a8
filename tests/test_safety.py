"""Nothing wrong is ever sent: deletions only of users syncer saw alive, zero dates, re-created
users, odd values a real database hands back, and the safety valve on what is really sent."""

from __future__ import annotations

import datetime as dt
import io
import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from syncer import logs
from syncer.errors import ConfigError
from syncer.sandbox import SandboxApp
from syncer.state.sql import SqlStateStore

from .helpers import (
    create_users_table,
    execute,
    insert_users,
    make_config,
    once,
    requests,
    user_row,
)

# ----------------------------------------------------------------------------- zero dates


def test_mysql_zero_dates_mean_not_deleted(mysql_url: str, tmp_path: Path,
                                           sandbox_app: SandboxApp) -> None:
    """`deleted_at DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00'`: the driver hands the zero
    date back as text; it means "not set", never "deleted"."""
    engine = sa.create_engine(mysql_url)
    with engine.begin() as conn:
        conn.execute(sa.text("SET SESSION sql_mode = ''"))
        conn.execute(sa.text("""CREATE TABLE users (
            id BIGINT PRIMARY KEY, name VARCHAR(100), phone VARCHAR(40), email VARCHAR(200),
            marketing INTEGER, sms VARCHAR(8), points NUMERIC(12, 2),
            deleted_at DATETIME NOT NULL DEFAULT '0000-00-00 00:00:00')"""))
        conn.execute(sa.text(
            "INSERT INTO users (id, name, phone, email, marketing, sms, points) VALUES "
            "(:id, :name, :phone, :email, :marketing, :sms, :points)"),
            [{k: v for k, v in user_row(i).items() if k not in ("touched", "deleted_at")}
             for i in range(1, 101)])
    engine.dispose()
    config = make_config(mysql_url, f"sqlite:///{tmp_path / 'state.db'}")

    first = once(config, sandbox_app)
    assert first.outcome == "ok", first.message
    assert first.counts["updated"] == 100
    assert "deleted_before_first_pass" not in first.counts

    execute(mysql_url, "UPDATE users SET name = 'renamed' WHERE id <= 8")
    second = once(config, sandbox_app)
    assert second.counts["updated"] == 8
    assert requests(second) == {"blux.update": 1}

    execute(mysql_url, "UPDATE users SET deleted_at = NOW() WHERE id = 3")
    third = once(config, sandbox_app)
    assert third.counts["deleted"] == 1 and third.counts["withdrawn"] == 1
    assert sandbox_app.snapshot()["withdrawn_user_ids"] == ["3"]


def test_a_soft_delete_column_that_deletes_everyone_is_refused(tmp_path: Path,
                                                              sandbox_app: SandboxApp) -> None:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i, deleted_at="0001-01-01") for i in range(1, 51)])
    state = f"sqlite:///{tmp_path / 'state.db'}"
    config = make_config(src, state)
    with pytest.raises(ConfigError) as caught:
        once(config, sandbox_app)
    assert "soft_delete_column = 'deleted_at' says 50 of 50 rows are deleted" in str(caught.value)
    store = SqlStateStore.from_url(state)
    try:
        assert not store.ledger.has_users()          # nothing was recorded as deleted
    finally:
        store.close()
    assert requests_made(sandbox_app) == 0


def requests_made(app: SandboxApp) -> int:
    snap = app.snapshot()
    return sum(int(v["total"]) for v in snap["requests"].values())


# ----------------------------------------------------------------------------- the valve


def test_the_valve_counts_what_would_be_sent_whatever_the_state_says(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """A state that (wrongly, as an older version could record it) says users are already
    deleted, while Blux still holds them: deleting them now is a deletion like any other."""
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 201)])
    state = tmp_path / "state.db"
    config = make_config(src, f"sqlite:///{state}")
    assert once(config, sandbox_app).outcome == "ok"
    execute(f"sqlite:///{state}", "UPDATE syncer_users SET gone = 1 WHERE CAST(user_id AS "
                                  "INTEGER) <= 60")
    execute(src, "UPDATE users SET deleted_at = '2026-12-04' WHERE id <= 60")

    tripped = once(config, sandbox_app)
    assert tripped.outcome == "valve", tripped.message
    assert "would delete 60 of" in (tripped.message or "")
    assert requests(tripped) == {}
    assert len(sandbox_app.snapshot()["users"]) == 200

    confirmed = once(config, sandbox_app, confirm=True)
    assert confirmed.counts["deleted"] == 60 and confirmed.counts["withdrawn"] == 60


def test_a_mass_recreation_is_weighed_by_the_valve(tmp_path: Path,
                                                   sandbox_app: SandboxApp) -> None:
    """A table restored from a backup with new creation times: every user "re-created" would
    mean a mass deletion and withdrawal; the valve stops it before any is sent."""
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    execute(src, "ALTER TABLE users ADD COLUMN created_at VARCHAR(40)")
    insert_users(src, [user_row(i, created_at="2026-01-01 10:00:00") for i in range(1, 101)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"created_column": "created_at"})
    assert once(config, sandbox_app).outcome == "ok"
    execute(src, "UPDATE users SET created_at = '2026-12-04 00:00:00'")
    tripped = once(config, sandbox_app)
    assert tripped.outcome == "valve", tripped.message
    assert requests(tripped) == {}


# ----------------------------------------------------------------------------- never seen alive


def test_a_user_never_seen_alive_is_never_withdrawn(source_url: str, tmp_path: Path,
                                                    sandbox_app: SandboxApp) -> None:
    """Outbox mode: a key shows up in the outbox but its row is gone and nothing was ever
    delivered for it (created and deleted between passes, or a view that lost its row for a
    moment): no Blux delete, no nachocode withdrawal; it is reported."""
    from syncer.capture import outbox_ddl as ob

    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in range(1, 11)])
    config = make_config(source_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"})
    ob.install(config)
    assert once(config, sandbox_app).counts["updated"] == 10
    insert_users(source_url, [user_row(11)])
    execute(source_url, "DELETE FROM users WHERE id = 11")
    execute(source_url, "DELETE FROM users WHERE id = 4")           # a real deletion

    out = io.StringIO()
    logs.configure("info", stream=out, json=True)
    result = once(config, sandbox_app)
    assert result.counts["deletions_not_sent"] == 1
    assert result.counts["deleted"] == 1 and result.counts["withdrawn"] == 1
    assert sandbox_app.snapshot()["withdrawn_user_ids"] == ["4"]
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(e["event"] == "diff.unseen_deletion" and e["user_id"] == "11" for e in events)
    # reported once, not at every pass
    again = once(config, sandbox_app)
    assert "deletions_not_sent" not in again.counts and requests(again) == {}


# ----------------------------------------------------------------------------- re-created users


def test_a_recreated_user_does_not_inherit_the_previous_persons_fields(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """Snapshot mode with `created_column`: user 5 is deleted and another person gets key 5
    (no phone) before the next pass. The previous person is deleted and withdrawn first, then
    the new one is sent whole: Blux does not keep the old phone number on the new person."""
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    execute(src, "ALTER TABLE users ADD COLUMN created_at VARCHAR(40)")
    insert_users(src, [user_row(i, created_at="2026-01-01 10:00:00") for i in range(1, 21)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"created_column": "created_at"})
    assert once(config, sandbox_app).outcome == "ok"
    assert "phone_number" in sandbox_app.user("5")["user_properties"]  # type: ignore[index]

    execute(src, "DELETE FROM users WHERE id = 5")
    insert_users(src, [user_row(5, name="someone else", phone=None, email=None,
                                created_at="2026-12-04 09:00:00")])
    first = once(config, sandbox_app)
    assert first.counts["recreated"] == 1
    assert first.counts["deleted"] == 1 and first.counts["withdrawn"] == 1
    assert first.more                                   # the new person goes right away
    second = once(config, sandbox_app)
    assert second.counts["updated"] == 1
    user = sandbox_app.user("5")
    assert user is not None
    assert "phone_number" not in user["user_properties"]
    assert "email_address" not in user["user_properties"]
    assert user["custom_user_properties"]["name"] == "someone else"
    assert requests(once(config, sandbox_app)) == {}    # settled


# ----------------------------------------------------------------------------- unreadable rows


def _capture_logs() -> io.StringIO:
    out = io.StringIO()
    logs.configure("debug", stream=out, json=True)
    return out


def test_sqlite_text_that_is_not_utf8_costs_only_its_row(tmp_path: Path,
                                                         sandbox_app: SandboxApp) -> None:
    """Invalid UTF-8 in a mapped column: that field is left out and reported, the user's other
    fields are sent. In the soft-delete column: nobody can tell whether the user is deleted, so
    the row is quarantined by key. Either way the other users go on, and the text never
    reaches a log line or a message."""
    from syncer import commands

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 31)])
    execute(src, "UPDATE users SET name = CAST(X'5345435245544e414d45ff' AS TEXT) WHERE id = 3")
    execute(src, "UPDATE users SET deleted_at = CAST(X'534543524554ff' AS TEXT) WHERE id = 7")
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    out = _capture_logs()
    result = once(config, sandbox_app)
    assert result.outcome == "partial", result.message      # something is owed: user 7
    assert result.counts["updated"] == 29
    assert result.counts["unreadable_rows"] == 1
    assert result.counts.problems["custom.name"] == 1
    user3 = sandbox_app.user("3")
    assert user3 is not None and "name" not in user3["custom_user_properties"]
    assert sandbox_app.user("7") is None
    quarantined = {(q.destination, q.user_id): q.reason
                   for q in commands.status(config).quarantined}
    assert set(quarantined) == {("blux", "7"), ("nachocode", "7")}
    assert "cannot be read" in quarantined[("blux", "7")]
    text = out.getvalue() + (result.message or "") + json.dumps(result.counts.to_json())
    assert "SECRET" not in text and "\\xff" not in text
    # the unreadable row costs nothing more until it changes; once readable, it is sent
    assert requests(once(config, sandbox_app)) == {}
    execute(src, "UPDATE users SET deleted_at = NULL WHERE id = 7")
    fixed = once(config, sandbox_app)
    assert fixed.counts["updated"] == 1 and fixed.outcome == "ok", fixed.message
    assert commands.status(config).quarantined == []


def test_postgresql_infinity_costs_only_its_row(pg_url: str, tmp_path: Path,
                                                sandbox_app: SandboxApp) -> None:
    execute(pg_url, """CREATE TABLE users (
        id BIGINT PRIMARY KEY, name VARCHAR(100), phone VARCHAR(40), email VARCHAR(200),
        marketing INTEGER, sms VARCHAR(8), points NUMERIC(12, 2), since timestamp,
        deleted_at timestamptz)""")
    insert_users(pg_url, [{**{k: v for k, v in user_row(i).items()
                              if k not in ("touched", "deleted_at")},
                           "since": "2026-01-01 10:00"} for i in range(1, 21)])
    execute(pg_url, "UPDATE users SET since = 'infinity' WHERE id = 2")
    execute(pg_url, "UPDATE users SET deleted_at = '-infinity' WHERE id = 5")
    execute(pg_url, "UPDATE users SET deleted_at = 'infinity' WHERE id = 6")   # never deleted
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}",
                         mapping={"custom_user_properties": {"name": "name", "since": "since"}})
    out = _capture_logs()
    result = once(config, sandbox_app)
    assert result.counts["updated"] == 19, result.message
    assert result.counts["unreadable_rows"] == 1
    assert result.counts.problems["custom.since"] == 1
    user2 = sandbox_app.user("2")
    assert user2 is not None and "since" not in user2["custom_user_properties"]
    assert sandbox_app.user("5") is None and sandbox_app.user("6") is not None
    assert "infinity" not in out.getvalue() + (result.message or "")


# ----------------------------------------------------------------------------- 5xx for one user


def test_a_user_the_api_keeps_failing_is_quarantined_and_tried_again_later(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer import commands
    from syncer.pipeline import run_pass
    from syncer.runtime import Runtime
    from syncer.sandbox import mock_transport

    from .helpers import Recorder, failing_for

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, 121)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    rt = Runtime(config, transport=Recorder(mock_transport(sandbox_app), failing_for("7")))
    try:
        first = run_pass(rt)
        assert first.counts["updated"] == 119 and first.counts["quarantined"] == 1
        assert first.outcome == "partial"
        again = run_pass(rt)                       # an incremental look: it waits
        assert requests(again) == {}
    finally:
        rt.close()
    (held,) = commands.status(config).quarantined
    assert held.user_id == "7" and "tried again in an hour" in held.reason
    execute(config.state.url, "UPDATE syncer_quarantine SET last_attempt = "
                              "datetime(last_attempt, '-61 minutes')")   # an hour later
    fixed = once(config, sandbox_app)                   # the API takes it now
    assert fixed.counts["updated"] == 1 and fixed.outcome == "ok", fixed.message
    assert commands.status(config).quarantined == []


def test_outbox_knows_a_key_deleted_and_recreated_between_passes(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """Outbox mode: the trigger marks deletions, so a key deleted and inserted again before the
    next pass is another person: the previous one is deleted and withdrawn, then the new one
    is sent whole (Blux keeps nothing of the old profile). An outbox installed by an earlier
    version (no `deleted` column) gets it when `outbox install` runs again."""
    from syncer.capture import outbox_ddl as ob

    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in range(1, 11)])
    config = make_config(source_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"})
    ob.install(config)
    for column in ("op", "txn", "urgent"):               # as an earlier version made it
        execute(source_url, f"ALTER TABLE syncer_outbox DROP COLUMN {column}")
    ob.install(config)                                   # upgrades it
    assert once(config, sandbox_app).counts["updated"] == 10
    execute(source_url, "DELETE FROM users WHERE id = 5")
    insert_users(source_url, [user_row(5, name="new person", phone=None, email=None)])

    first = once(config, sandbox_app)
    assert first.counts["recreated"] == 1
    assert first.counts["deleted"] == 1 and first.counts["withdrawn"] == 1
    assert sandbox_app.user("5") is None
    second = once(config, sandbox_app)
    assert second.counts["updated"] == 1
    user = sandbox_app.user("5")
    assert user is not None and "phone_number" not in user["user_properties"]
    assert user["custom_user_properties"]["name"] == "new person"
    # an ordinary update of the new person is just an update
    execute(source_url, "UPDATE users SET name = 'renamed' WHERE id = 5")
    third = once(config, sandbox_app)
    assert third.counts["updated"] == 1 and "recreated" not in third.counts
    assert sandbox_app.snapshot()["withdrawn_user_ids"] == ["5"]


# ----------------------------------------------------------------------------- from the review


def _recreate_five(src: str) -> None:
    execute(src, "DELETE FROM users WHERE id = 5")
    insert_users(src, [user_row(5, name="someone else", phone=None, email=None,
                                created_at="2026-12-04 09:00:00")])


def _created_at_table(tmp_path: Path, n: int = 20) -> str:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    execute(src, "ALTER TABLE users ADD COLUMN created_at VARCHAR(40)")
    insert_users(src, [user_row(i, created_at="2026-01-01 10:00:00") for i in range(1, n + 1)])
    return src


@pytest.mark.parametrize("refusing", ["blux.delete", "nachocode.withdraw"])
def test_a_recreation_is_finished_even_when_a_deletion_fails_first(
        tmp_path: Path, sandbox_app: SandboxApp, refusing: str) -> None:
    """The previous person's deletion fails (5xx at Blux, 403 at nachocode) in the pass that
    found the re-creation: it is owed until it lands, and the new person is sent only then."""
    from syncer.pipeline import run_pass
    from syncer.runtime import Runtime
    from syncer.sandbox import mock_transport

    from .helpers import Recorder

    src = _created_at_table(tmp_path)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"created_column": "created_at"})
    assert once(config, sandbox_app).outcome == "ok"
    _recreate_five(src)

    def refuse(request: httpx.Request, _n: int) -> httpx.Response | None:
        if refusing == "blux.delete" and request.url.path.endswith("/delete/bulk"):
            return httpx.Response(500, json={"message": "down"}, request=request)
        if refusing == "nachocode.withdraw" and "app-user" in request.url.path:
            return httpx.Response(403, json={"statusCode": 403, "path": "/api/app-user/v2",
                                             "code": "ERR-AB-ACS-21", "message": "no"},
                                  request=request)
        return None

    rt = Runtime(config, transport=Recorder(mock_transport(sandbox_app), refuse))
    try:
        failing = run_pass(rt)
    finally:
        rt.close()
    assert failing.outcome == "partial" and failing.counts["recreated"] == 1
    for _ in range(3):                      # the API is back
        once(config, sandbox_app)
    user = sandbox_app.user("5")
    assert user is not None and "phone_number" not in user["user_properties"]
    assert user["custom_user_properties"]["name"] == "someone else"
    assert "5" in sandbox_app.snapshot()["withdrawn_user_ids"]
    assert requests(once(config, sandbox_app)) == {}


def test_a_valve_stop_for_recreations_sends_no_deletion_at_any_pass(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = _created_at_table(tmp_path, 2000)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",   # examined 100 at a time
                         capture={"created_column": "created_at"}, source={"chunk_size": 100})
    assert once(config, sandbox_app).outcome == "ok"
    execute(src, "UPDATE users SET created_at = '2026-12-04 00:00:00', name = 'restored'")
    for _ in range(3):
        tripped = once(config, sandbox_app)
        assert tripped.outcome == "valve", tripped.message
        assert "no deletion was sent" in (tripped.message or "")
    snap = sandbox_app.snapshot()
    assert snap["deleted_user_ids"] == [] and snap["withdrawn_user_ids"] == []


def test_the_same_person_in_another_time_zone_or_with_a_new_key_is_not_recreated(
        pg_schema: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """created_column as timestamptz: the session's time zone changes how the value is
    written, not who holds the key; a new fingerprint key changes nothing either."""
    from syncer import commands
    from syncer.sandbox import mock_transport

    from .helpers import pg_url_for

    utc = pg_url_for(pg_schema)
    create_users_table(utc)
    execute(utc, "ALTER TABLE users ADD COLUMN created_at timestamptz")
    insert_users(utc, [user_row(i, created_at="2026-01-01 10:00:00+00") for i in range(1, 31)])
    config = make_config(utc, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"created_column": "created_at"})
    assert once(config, sandbox_app).counts["updated"] == 30
    seoul = utc + "%20-cTimeZone%3DAsia/Seoul"
    execute(utc, "UPDATE users SET name = 'renamed' WHERE id <= 3")
    moved = once(make_config(seoul, f"sqlite:///{tmp_path / 'state.db'}",
                             capture={"created_column": "created_at"}), sandbox_app)
    assert moved.counts["updated"] == 3 and "recreated" not in moved.counts
    again = commands.resync(config, None, new_key=True, transport=mock_transport(sandbox_app))
    assert again.result is not None and "recreated" not in again.result.counts
    assert sandbox_app.snapshot()["deleted_user_ids"] == []


def test_created_column_may_not_be_the_watermark_column(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="created_column"):
        make_config("sqlite:///x.db", "sqlite:///s.db",
                    capture={"mode": "watermark", "watermark_column": "updated_at",
                             "created_column": "updated_at"})


def test_mysql_replace_is_the_same_person(mysql_url: str, tmp_path: Path,
                                           sandbox_app: SandboxApp) -> None:
    """REPLACE deletes and inserts in one statement: the same person saving a profile. A delete
    and a later insert in another transaction is another person."""
    from syncer.capture import outbox_ddl as ob

    create_users_table(mysql_url)
    insert_users(mysql_url, [user_row(i) for i in range(1, 11)])
    config = make_config(mysql_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"})
    ob.install(config)
    assert once(config, sandbox_app).counts["updated"] == 10
    execute(mysql_url, "REPLACE INTO users (id, name, phone, email, marketing, sms, points) "
                       "VALUES (7, 'saved again', '010-1234-5678', 'u7@example.com', 1, 'Y', 7)")
    saved = once(config, sandbox_app)
    assert saved.counts["updated"] == 1 and "recreated" not in saved.counts
    assert saved.counts["deleted"] == 0 and saved.counts["withdrawn"] == 0
    execute(mysql_url, "DELETE FROM users WHERE id = 8")
    insert_users(mysql_url, [user_row(8, name="another person", phone=None)])
    other = once(config, sandbox_app)
    assert other.counts["recreated"] == 1 and other.counts["withdrawn"] == 1
    assert sandbox_app.snapshot()["withdrawn_user_ids"] == ["8"]


def test_a_postgres_date_watermark_in_an_empty_table_reads_todays_rows(
        pg_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from .helpers import create_table

    create_table(pg_url, ts_type="DATE")
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "watermark", "watermark_column": "updated_at",
                                  "lookback_seconds": 0})
    assert once(config, sandbox_app).outcome == "ok"          # empty: nothing yet
    insert_users(pg_url, [{**user_row(i), "updated_at": dt.date.today()}
                          for i in range(1, 6)])
    assert once(config, sandbox_app).counts["updated"] == 5


def test_a_key_that_cannot_be_read_in_the_outbox_costs_only_itself(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer.capture import outbox_ddl as ob

    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src, key_type="TEXT")
    insert_users(src, [user_row(i, id=f"u{i}") for i in range(1, 6)])
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}", capture={"mode": "outbox"})
    ob.install(config)
    once(config, sandbox_app)
    execute(src, "INSERT INTO syncer_outbox (user_key) VALUES (CAST(X'ff' AS TEXT))")
    execute(src, "UPDATE users SET name = 'changed' WHERE id = 'u3'")
    result = once(config, sandbox_app)
    assert result.counts["updated"] == 1 and result.counts["invalid_keys"] == 1
    assert once(config, sandbox_app).outcome == "ok"          # the outbox was consumed


def test_infinity_as_the_soft_delete_default_means_alive(pg_url: str, tmp_path: Path,
                                                         sandbox_app: SandboxApp) -> None:
    execute(pg_url, """CREATE TABLE users (
        id BIGINT PRIMARY KEY, name VARCHAR(100), phone VARCHAR(40), email VARCHAR(200),
        marketing INTEGER, sms VARCHAR(8), points NUMERIC(12, 2),
        deleted_at timestamptz NOT NULL DEFAULT 'infinity')""")
    insert_users(pg_url, [{k: v for k, v in user_row(i).items()
                           if k not in ("touched", "deleted_at")} for i in range(1, 31)])
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}")
    first = once(config, sandbox_app)
    assert first.outcome == "ok" and first.counts["updated"] == 30
    execute(pg_url, "UPDATE users SET deleted_at = now() WHERE id = 4")
    assert once(config, sandbox_app).counts["withdrawn"] == 1


def test_a_rolled_back_write_never_makes_a_first_run_look_like_a_second(
        pg_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer import commands
    from syncer.capture import outbox_ddl as ob
    from syncer.sandbox import mock_transport

    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 6)])
    config = make_config(pg_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"})
    ob.install(config)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        tx = conn.begin()
        conn.execute(sa.text("UPDATE users SET name = 'never' WHERE id = 1"))
        tx.rollback()
    engine.dispose()
    first = commands.once(config, transport=mock_transport(sandbox_app))
    assert first.outcome == "ok" and first.counts["updated"] == 5
