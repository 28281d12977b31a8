"""Watermark and outbox capture on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from syncer.capture import outbox_ddl as ob
from syncer.capture.watermark_cursor import decode, encode, shift
from syncer.config import Config
from syncer.errors import ConfigError
from syncer.results import PassResult
from syncer.runtime import Runtime
from syncer.sandbox import SandboxApp, mock_transport

from .helpers import (
    add_users,
    assert_mirror_matches,
    create_table,
    execute,
    kind_of,
    make_config,
    once,
    pg_url_for,
    requests,
    touch,
    wait_for,
)


def config_for(url: str, tmp_path: Path, mode: str, **capture: Any) -> Config:
    return make_config(url, f"sqlite:///{tmp_path / 'state.db'}",
                       capture={"mode": mode, "watermark_column": "updated_at",
                                "lookback_seconds": 1.0, **capture})


def run_scenario(url: str, config: Config, app: SandboxApp) -> list[PassResult]:
    """Inserts, updates, unmapped touches, soft and hard deletes; returns the passes."""
    add_users(url, range(1, 201))
    results = [once(config, app)]                       # the first pass: a full snapshot
    assert results[0].kind == "reconcile" and results[0].counts["updated"] == 200
    time.sleep(0.01)
    touch(url, "id IN (1, 2)", "name = 'changed'")
    touch(url, "id = 3", "marketing = 0")
    touch(url, "id BETWEEN 50 AND 150", "touched = 'x'")   # unmapped (its timestamp moves)
    touch(url, "id = 4", "deleted_at = 'yes'")
    execute(url, "DELETE FROM users WHERE id = 5")
    add_users(url, range(1000, 1003))
    results.append(once(config, app))
    results.append(once(config, app))
    return results


def test_watermark_passes_send_exactly_the_changes(source_url: str, tmp_path: Path,
                                                  sandbox_app: SandboxApp) -> None:
    create_table(source_url)
    config = config_for(source_url, tmp_path, "watermark")
    _first, second, third = run_scenario(source_url, config, sandbox_app)
    assert second.kind == "incremental" and second.outcome == "ok"
    assert second.counts["updated"] == 2 + 1 + 3
    assert second.counts["deleted"] == 1 and second.counts["withdrawn"] == 1  # the soft delete
    assert requests(third) == {}
    # the hard delete is invisible to a watermark: the reconcile pass catches it
    reconcile = once(config, sandbox_app, reconcile=True)
    assert reconcile.kind == "reconcile" and reconcile.counts["deleted"] == 1
    assert_mirror_matches(sandbox_app, source_url)


def test_outbox_passes_send_exactly_the_changes(source_url: str, tmp_path: Path,
                                               sandbox_app: SandboxApp) -> None:
    create_table(source_url)
    config = config_for(source_url, tmp_path, "outbox")
    with pytest.raises(ConfigError, match="syncer outbox install"):
        once(config, sandbox_app)
    ob.install(config)
    ob.install(config)   # harmless twice
    _first, second, third = run_scenario(source_url, config, sandbox_app)
    assert second.kind == "incremental" and second.outcome == "ok"
    assert second.counts["updated"] == 6
    assert second.counts["deleted"] == 2 and second.counts["withdrawn"] == 2  # hard deletes too
    # 200 inserts before the snapshot, then 2+1+1+1+3 changes; unmapped touches leave no row
    assert second.counts["scanned"] == 200 + 8
    assert requests(third) == {}
    assert outbox_depth(source_url) == 0
    assert_mirror_matches(sandbox_app, source_url)


def outbox_depth(url: str) -> int:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM syncer_outbox")).scalar_one()
    engine.dispose()
    return int(n)


def triggers(url: str) -> set[str]:
    engine = sa.create_engine(url)
    query = {
        "postgresql": "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                      "WHERE c.relnamespace = current_schema()::regnamespace "
                      "AND NOT t.tgisinternal",
        "mariadb": "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                   "WHERE TRIGGER_SCHEMA = DATABASE()",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'trigger'",
    }[kind_of(url)]
    with engine.connect() as conn:
        names = {r[0] for r in conn.execute(sa.text(query))}
    engine.dispose()
    return {n for n in names if n.startswith("syncer_outbox")}


def test_outbox_install_and_uninstall_are_idempotent(source_url: str, tmp_path: Path) -> None:
    create_table(source_url)
    config = config_for(source_url, tmp_path, "outbox")
    ob.install(config)
    ob.install(config)
    assert len(triggers(source_url)) == 3
    add_users(source_url, range(1, 4))
    touch(source_url, "id = 1", "touched = 'unmapped'", bump=False)
    assert outbox_depth(source_url) == 3
    touch(source_url, "id = 1", "email = 'U1@EXAMPLE.COM'", bump=False)   # case-only change counts
    assert outbox_depth(source_url) == 4
    ddl = ob.sql(config)
    assert "syncer_outbox" in ddl and "CREATE TRIGGER" in ddl
    assert "DROP TABLE" in ob.sql(config, uninstall=True)
    ob.uninstall(config)
    ob.uninstall(config)
    assert triggers(source_url) == set()
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        assert not sa.inspect(conn).has_table("syncer_outbox")
    engine.dispose()
    add_users(source_url, range(10, 12))     # the app keeps working without the triggers


@pytest.mark.parametrize("source_url", ["postgresql", "mariadb"], indirect=True)
def test_outbox_handles_out_of_order_commits(source_url: str, tmp_path: Path,
                                             sandbox_app: SandboxApp) -> None:
    """A transaction that took a lower outbox id commits after a later one was consumed.
    (SQLite has one writer at a time: its commits cannot interleave.)"""
    db = source_url
    create_table(db)
    config = config_for(db, tmp_path, "outbox")
    ob.install(config)
    add_users(db, range(1, 11))
    assert once(config, sandbox_app).counts["updated"] == 10
    assert once(config, sandbox_app).outcome == "ok"
    engine = sa.create_engine(db)
    slow = engine.connect()
    slow_tx = slow.begin()
    slow.execute(sa.text("UPDATE users SET name = 'slow' WHERE id = 1"))   # lower outbox id
    touch(db, "id = 2", "name = 'fast'")                                  # commits first
    passed = once(config, sandbox_app)
    assert passed.counts["updated"] == 1
    slow_tx.commit()
    slow.close()
    engine.dispose()
    later = once(config, sandbox_app)
    assert later.counts["updated"] == 1
    assert sandbox_app.snapshot()["users"]["1"]["custom_user_properties"]["name"] == "slow"
    assert outbox_depth(db) == 0


def test_watermark_never_loses_a_long_transaction_on_postgres(
        pg_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """The classic race, with two real connections: the slow transaction stamps its row first,
    stays open while others commit and passes run far past the lookback, then commits."""
    create_table(pg_url)
    config = config_for(pg_url, tmp_path, "watermark", lookback_seconds=0)
    add_users(pg_url, range(1, 11))
    assert once(config, sandbox_app).counts["updated"] == 10
    engine = sa.create_engine(pg_url)
    slow = engine.connect()
    slow_tx = slow.begin()
    slow.execute(sa.text("UPDATE users SET name = 'slow', updated_at = now() WHERE id = 1"))
    slow_stamp = slow.execute(sa.text("SELECT updated_at FROM users WHERE id = 1")).scalar_one()
    time.sleep(0.05)
    for n in range(3):   # others commit later changes, passes run (lookback is 0)
        touch(pg_url, f"id = {2 + n}", f"name = 'fast {n}'")
        result = once(config, sandbox_app)
        assert result.counts["updated"] == 1
        assert result.counts.get("scanned", 0) >= 1
    fast_stamp = sa.create_engine(pg_url).connect().execute(
        sa.text("SELECT max(updated_at) FROM users")).scalar_one()
    assert slow_stamp < fast_stamp   # without the horizon the cursor would be past it
    rt = Runtime(config)
    position = rt.capture(False).position(rt.ctx)
    rt.close()
    held = position["held_by_open_transaction"]
    assert isinstance(held, dict) and held["state"] == "idle in transaction"
    slow_tx.commit()
    slow.close()
    engine.dispose()
    final = once(config, sandbox_app)
    assert final.counts["updated"] == 1
    assert sandbox_app.snapshot()["users"]["1"]["custom_user_properties"]["name"] == "slow"


@pytest.mark.parametrize("ts_type", ["timestamptz", "timestamp", "timestamp(6)"])
def test_postgres_timestamp_types_keep_full_precision(
        pg_url: str, tmp_path: Path, sandbox_app: SandboxApp, ts_type: str) -> None:
    create_table(pg_url, ts_type)
    config = config_for(pg_url, tmp_path, "watermark", lookback_seconds=0)
    precision_scenario(pg_url, config, sandbox_app, "'2031-01-01 00:00:00.000001'",
                       "'2031-01-01 00:00:00.000002'")


def test_mariadb_datetime6_keeps_full_precision(mysql_url: str, tmp_path: Path,
                                                 sandbox_app: SandboxApp) -> None:
    create_table(mysql_url, "DATETIME(6)")
    config = config_for(mysql_url, tmp_path, "watermark", lookback_seconds=0)
    precision_scenario(mysql_url, config, sandbox_app, "'2031-01-01 00:00:00.000001'",
                       "'2031-01-01 00:00:00.000002'")


@pytest.mark.parametrize("layout", ["2031-01-01 00:00:00.{}", "2031-01-01T00:00:00.{}Z"])
def test_sqlite_text_timestamps(tmp_path: Path, sandbox_app: SandboxApp, layout: str) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    create_table(url, "TEXT")
    config = config_for(url, tmp_path, "watermark", lookback_seconds=0)
    precision_scenario(url, config, sandbox_app, "'" + layout.format("000001") + "'",
                       "'" + layout.format("000002") + "'")


def precision_scenario(url: str, config: Config, app: SandboxApp, t1: str, t2: str) -> None:
    """Two changes one microsecond apart, in separate passes, with no lookback: the second
    must not be lost to rounding, and the first is not sent twice."""
    add_users(url, range(1, 4))
    execute(url, "UPDATE users SET updated_at = '2000-01-01 00:00:00'")
    assert once(config, app).counts["updated"] == 3
    execute(url, f"UPDATE users SET name = 'a', updated_at = {t1} WHERE id = 1")
    assert once(config, app).counts["updated"] == 1
    execute(url, f"UPDATE users SET name = 'b', updated_at = {t2} WHERE id = 2")
    second = once(config, app)
    assert second.counts["updated"] == 1
    assert requests(once(config, app)) == {}


def test_cursor_values_round_trip_and_shift() -> None:
    aware = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    naive = dt.datetime(2026, 1, 2, 3, 4, 5, 1)
    for value in (aware, naive, "2026-01-02 03:04:05.000001", None, dt.date(2026, 1, 2)):
        assert decode(encode(value)) == value
    assert shift(naive, 300) == dt.datetime(2026, 1, 2, 2, 59, 5, 1)
    assert shift("2026-01-02 03:04:05.123456", 5) == "2026-01-02 03:04:00.123456"
    assert shift("2026-01-02T03:04:05Z", 3600) == "2026-01-02T02:04:05Z"
    assert shift("2026-01-02T03:04:05.1+09:00", 1) == "2026-01-02T03:04:04.1+09:00"
    assert shift("2026-01-02", 10) == "2026-01-01"
    with pytest.raises(ConfigError, match="ISO 8601"):
        shift("yesterday", 1)
    with pytest.raises(ConfigError, match="outbox"):
        encode(12345)


def test_a_commit_starts_a_pass_without_waiting_for_the_interval(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """The outbox watcher sees the new row and wakes the daemon, on every database."""
    from syncer.daemon import Daemon

    create_table(source_url)
    config = make_config(source_url, f"sqlite:///{tmp_path / 'state.db'}",
                         capture={"mode": "outbox"}, schedule={"interval_seconds": 3600})
    ob.install(config)
    add_users(source_url, range(1, 6))
    rt = Runtime(config, transport=mock_transport(sandbox_app))
    daemon = Daemon(config, rt)
    daemon.start()
    try:
        wait_for(lambda: daemon.passes >= 1 and daemon.listener is not None
                 and daemon.listener.watching.is_set())
        assert len(sandbox_app.snapshot()["users"]) == 5
        add_users(source_url, range(100, 101))   # the interval is an hour: only a wake-up helps
        wait_for(lambda: "100" in sandbox_app.snapshot()["users"])
        assert daemon.listener is not None and daemon.listener.changes >= 1
    finally:
        daemon.stop.set()
        daemon.shutdown()


def test_cursor_advances_past_a_bulk_update_once_the_lookback_has_passed() -> None:
    from syncer.capture.watermark import Horizon, WatermarkCapture
    from syncer.capture.watermark_cursor import Cursor
    from syncer.config import CaptureConfig

    cap = WatermarkCapture(CaptureConfig(mode="watermark", watermark_column="updated_at",
                                         lookback_seconds=300))
    t = dt.datetime(2026, 1, 1, 12)
    start = Cursor(t, 1000.0, False)
    assert start.low(300) == (t - dt.timedelta(seconds=300), False)
    # a newer row moves it and restarts the clock
    later = cap.advance(start, t + dt.timedelta(seconds=1), None, 1010.0)
    assert later == Cursor(t + dt.timedelta(seconds=1), 1010.0, False)
    # nothing newer: the window stays until the lookback has passed on our clock...
    assert cap.advance(start, t, None, 1299.0) == start
    # ...then rows at the newest value are settled and later passes read strictly after it
    settled = cap.advance(start, t, None, 1300.0)
    assert settled.exclusive and settled.low(300) == (t, True)
    # PostgreSQL: the horizon is the cursor
    h = Horizon(t + dt.timedelta(hours=1), t + dt.timedelta(hours=1), None, True)
    assert cap.advance(start, t, h, 1001.0).value == t + dt.timedelta(hours=1)


def test_idle_watermark_passes_stop_rereading_a_bulk_update(source_url: str, tmp_path: Path,
                                                            sandbox_app: SandboxApp) -> None:
    create_table(source_url)
    config = config_for(source_url, tmp_path, "watermark", lookback_seconds=0.2)
    add_users(source_url, range(1, 51))
    execute(source_url, "UPDATE users SET updated_at = '2026-01-01 00:00:00'")  # one value for all
    assert once(config, sandbox_app).counts["updated"] == 50
    time.sleep(0.25)
    once(config, sandbox_app)
    idle = once(config, sandbox_app)
    assert idle.counts.get("scanned", 0) == 0
    touch(source_url, "id = 7", "name = 'after'")
    assert once(config, sandbox_app).counts["updated"] == 1


@pytest.mark.parametrize("source_url", ["postgresql", "mariadb"], indirect=True)
def test_reconcile_compares_key_ranges_and_reads_only_the_changed_ones(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from syncer.capture import snapshot

    monkeypatch.setattr(snapshot, "BLOCK", 100)
    db = source_url
    create_table(db)
    add_users(db, range(1, 2001))
    config = config_for(db, tmp_path, "snapshot")
    assert once(config, sandbox_app).counts["updated"] == 2000
    idle = once(config, sandbox_app)
    assert idle.counts.get("candidates", 0) == 0 and idle.counts["scanned"] == 2000
    assert idle.position["ranges_read_row_by_row"] == 0
    touch(db, "id IN (5, 1500)", "name = 'changed'")
    touch(db, "id = 700", "touched = 'unmapped'")          # no range differs for this
    execute(db, "DELETE FROM users WHERE id = 1234")
    add_users(db, range(5000, 5003))                        # beyond the last known key
    changed = once(config, sandbox_app)
    assert changed.counts["updated"] == 2 + 3 and changed.counts["deleted"] == 1
    assert changed.position["ranges_read_row_by_row"] == 4   # 1..100, 1401.., 1201.., last
    assert_mirror_matches(sandbox_app, db)
    assert requests(once(config, sandbox_app)) == {}


# ----------------------------------------------------------------------------- odd watermarks


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_a_date_watermark_never_misses_a_change_later_the_same_day(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """A DATE column: every row changed today carries today's date, so a read may never be
    strictly after it, however long ago the lookback passed."""
    db = source_url
    create_table(db, ts_type="DATE" if kind_of(db) == "postgresql" else "TEXT")
    today = dt.date.today().isoformat()
    add_users(db, range(1, 11))
    execute(db, "UPDATE users SET updated_at = :d", {"d": today})
    config = config_for(db, tmp_path, "watermark", lookback_seconds=0)
    assert once(config, sandbox_app).counts["updated"] == 10
    for n in range(3):    # passes well past the (zero) lookback, each with a change today
        execute(db, f"UPDATE users SET name = 'day {n}', updated_at = :d WHERE id = {n + 1}",
                {"d": today})
        result = once(config, sandbox_app)
        assert result.counts.get("updated") == 1, (n, result.counts)
    assert_mirror_matches(sandbox_app, db)


@pytest.mark.parametrize("source_url", ["sqlite", "mariadb"], indirect=True)
def test_a_row_stamped_in_the_future_does_not_jam_the_cursor(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    db = source_url
    create_table(db)
    add_users(db, range(1, 11))
    config = config_for(db, tmp_path, "watermark", lookback_seconds=0)
    assert once(config, sandbox_app).counts["updated"] == 10
    later = ("strftime('%Y-%m-%d %H:%M:%f', 'now', '+1 hour')" if kind_of(db) == "sqlite"
             else "NOW(6) + INTERVAL 1 HOUR")
    execute(db, f"UPDATE users SET name = 'clock ahead', updated_at = {later} WHERE id = 1")
    for n in range(3):
        touch(db, f"id = {n + 2}", f"name = 'now {n}'")
        result = once(config, sandbox_app)
        assert result.counts.get("updated", 0) >= 1, (n, result.counts)
        assert result.position.get("stamped_in_the_future") == 1
    assert_mirror_matches(sandbox_app, db)
    rt = Runtime(config)
    try:
        position = rt.capture(reconcile=False).position(rt.ctx)
    finally:
        rt.close()
    assert "1 rows have updated_at after the database's clock" in str(
        position["stamped_in_the_future"])


def test_text_watermarks_in_two_layouts_are_both_read(tmp_path: Path,
                                                      sandbox_app: SandboxApp) -> None:
    """'2026-12-04T10:00' sorts after '2026-12-04 23:00' as text: a cursor in the 'T' layout
    must still see a later change written with a space."""
    db = f"sqlite:///{tmp_path / 'app.db'}"
    create_table(db)
    add_users(db, range(1, 6))
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=10)
    execute(db, "UPDATE users SET updated_at = :t", {"t": now.isoformat(sep="T")})
    config = config_for(db, tmp_path, "watermark", lookback_seconds=0)
    assert once(config, sandbox_app).counts["updated"] == 5
    assert once(config, sandbox_app).counts.get("updated", 0) == 0     # the cursor settles
    later = (now + dt.timedelta(minutes=5)).isoformat(sep=" ")
    execute(db, "UPDATE users SET name = 'spaced', updated_at = :t WHERE id = 2", {"t": later})
    result = once(config, sandbox_app)
    assert result.counts.get("updated") == 1, result.counts
    assert_mirror_matches(sandbox_app, db)


def test_rows_without_a_watermark_are_read_by_incremental_passes(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    create_table(source_url)
    add_users(source_url, range(1, 6))
    config = config_for(source_url, tmp_path, "watermark", lookback_seconds=0)
    assert once(config, sandbox_app).counts["updated"] == 5
    execute(source_url, "INSERT INTO users (id, name, marketing, sms, updated_at) "
                "VALUES (50, 'no stamp', 1, 'Y', NULL)")
    result = once(config, sandbox_app)
    assert result.counts.get("updated") == 1, result.counts
    assert requests(once(config, sandbox_app)) == {}   # read again, never sent again
    rt = Runtime(config)
    try:
        position = rt.capture(reconcile=False).position(rt.ctx)
    finally:
        rt.close()
    assert "1 rows have no updated_at" in str(position["rows_without_watermark"])


def test_status_warns_when_the_cursor_stands_ahead_of_the_clock(
        tmp_path: Path, sandbox_app: SandboxApp) -> None:
    from syncer.capture.watermark import CURSOR
    from syncer.capture.watermark_cursor import Cursor
    from syncer.state.sql import SqlStateStore

    db = f"sqlite:///{tmp_path / 'app.db'}"
    create_table(db)
    add_users(db, range(1, 4))
    config = config_for(db, tmp_path, "watermark")
    once(config, sandbox_app)
    store = SqlStateStore.from_url(config.state.url)   # as an older version could leave it
    ahead = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=3)).replace(tzinfo=None)
    store.cursors.set(CURSOR, Cursor(ahead.isoformat(sep=" "), time.time(), True).encode(),
                     dt.datetime(2026, 1, 1))
    store.close()
    rt = Runtime(config)
    try:
        position = rt.capture(reconcile=False).position(rt.ctx)
    finally:
        rt.close()
    assert "stands ahead of the database's clock" in str(position["cursor_ahead_of_clock"])


def test_the_postgres_function_body_quote_never_occurs_in_the_body(
        pg_admin: sa.Engine, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """A schema (found through the search path, not the config) whose name holds the dollar
    quote's tag must not end the trigger function's body early."""
    schema = f"app$syncer${uuid.uuid4().hex[:8]}"
    with pg_admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        db = pg_url_for(schema.replace("$", "%24"))
        create_table(db)
        config = config_for(db, tmp_path, "outbox")
        ddl = ob.sql(config)
        assert "$syncer$" in ddl   # the schema's name is in the body ...
        ob.install(config)         # ... and the body still parses
        add_users(db, range(1, 4))
        assert outbox_depth(db) == 3
        assert once(config, sandbox_app).counts["updated"] == 3
        touch(db, "id = 2", "name = 'changed'")
        second = once(config, sandbox_app)
        assert second.counts["updated"] == 1 and outbox_depth(db) == 0
    finally:
        with pg_admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))


def test_the_dollar_quote_tag_is_chosen_to_avoid_the_body() -> None:
    for body in ("BEGIN END", "x $syncer$ y", "$syncer$ $syncer_1$ $syncer_2$"):
        quoted = ob.dollar_quote(body)
        tag = quoted[:quoted.index("$", 1) + 1]
        assert quoted == f"{tag}{body}{tag}"
        assert tag not in body


def test_the_outbox_takes_any_key_and_never_breaks_the_apps_write(
        source_url: str, tmp_path: Path, sandbox_app: SandboxApp) -> None:
    """A key longer than 255 characters, outside the database's default character set, or
    NULL (the configured key need not be the table's primary key): the app's writes go through,
    and the outbox carries every key it can."""
    text_type = "VARCHAR(1000)"
    # an outbox created with the database's default would be latin1
    if kind_of(source_url) == "mariadb":
        execute(source_url, "ALTER DATABASE CHARACTER SET latin1")
        text_type += " CHARACTER SET utf8mb4"
    execute(source_url, f"""CREATE TABLE users (
        row_id INTEGER PRIMARY KEY, id {text_type}, name VARCHAR(100), phone VARCHAR(40),
        email VARCHAR(200), marketing INTEGER, sms VARCHAR(8), points NUMERIC(12, 2),
        touched VARCHAR(40), deleted_at VARCHAR(40))""")
    if kind_of(source_url) == "mariadb":   # an outbox installed by an earlier version is upgraded
        execute(source_url, "CREATE TABLE syncer_outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "user_key VARCHAR(255) NOT NULL, created_at TIMESTAMP(6) NOT NULL "
                    "DEFAULT CURRENT_TIMESTAMP(6))")
    config = config_for(source_url, tmp_path, "outbox")
    ob.install(config)
    assert once(config, sandbox_app).outcome == "ok"     # the first pass: a snapshot
    long_key = "가나" + "k" * 600
    execute(source_url, "INSERT INTO users (row_id, id, name) VALUES (1, :k, 'long'), "
                        "(2, NULL, 'null')", {"k": long_key})
    execute(source_url, "UPDATE users SET name = 'still null' WHERE row_id = 2")
    execute(source_url, "UPDATE users SET id = NULL WHERE row_id = 1")
    execute(source_url, "UPDATE users SET id = :k WHERE row_id = 1", {"k": long_key})
    execute(source_url, "DELETE FROM users WHERE row_id = 2")
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(sa.text("SELECT user_key FROM syncer_outbox"))]
    engine.dispose()
    assert keys == [long_key] * 3    # insert, key set to NULL (the old key), key set back
    result = once(config, sandbox_app)
    assert result.outcome == "ok", result.message
    assert result.counts["updated"] == 1
    assert sandbox_app.snapshot()["users"][long_key]["custom_user_properties"] == {"name": "long"}
    assert outbox_depth(source_url) == 0
    ob.install(config)   # reinstalling over an existing outbox keeps working
    execute(source_url, "INSERT INTO users (row_id, id, name) VALUES (3, :k, 'again')",
            {"k": "x" * 700})
    assert outbox_depth(source_url) == 1
