"""Users spread over several tables ([[source.tables]]): the config, outbox triggers on each
table and their health, a view refused, a watermark per table with a cursor each, index advice
that names a table, the blind spots plan and status report, and the mapping helpers
(``empty_as_null``, a soft-delete expression)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from syncer import commands
from syncer.capture import outbox_ddl as ob
from syncer.capture.blind_spots import blind_spots, tables_read
from syncer.capture.watermark_tables import cursor_name
from syncer.config import Config
from syncer.errors import ConfigError
from syncer.mapping import Mapping
from syncer.model import RawRow
from syncer.runtime import Runtime
from syncer.sandbox import SandboxApp

from .helpers import execute, kind_of, make_config, now_sql, once, requests

QUERY = ("SELECT u.id, u.email, u.is_active, p.phone, p.marketing "
         "FROM app_user u LEFT JOIN profile p ON p.user_id = u.id")


def create_app(url: str) -> None:
    ts = {"postgresql": "timestamptz", "mariadb": "DATETIME(6)", "sqlite": "TEXT"}[kind_of(url)]
    execute(url, f"CREATE TABLE app_user (id BIGINT PRIMARY KEY, email VARCHAR(200) NOT NULL "
                 f"DEFAULT '', is_active INTEGER NOT NULL DEFAULT 1, last_login {ts}, "
                 f"modified {ts})")
    execute(url, f"CREATE TABLE profile (id INTEGER PRIMARY KEY, user_id BIGINT NOT NULL, "
                 f"phone VARCHAR(40), marketing INTEGER, updated_at {ts})")
    for i in range(1, 6):
        execute(url, f"INSERT INTO app_user (id, email, modified) VALUES ({i}, 'u{i}@ex.com', "
                     f"{now_sql(url)})")
        execute(url, f"INSERT INTO profile (id, user_id, phone, marketing, updated_at) VALUES "
                     f"({i}, {i}, '010-1000-200{i}', 1, {now_sql(url)})")


def tables_config(url: str, tmp_path: Path, mode: str, *, watermarks: dict[str, str] | None = None,
                  **capture: Any) -> Config:
    wm = watermarks or {}
    return make_config(
        url, f"sqlite:///{tmp_path / 'state.db'}",
        source={"table": None, "query": QUERY, "tables": [
            {"name": "app_user", "key": "id", **({"watermark_column": wm["app_user"]}
                                                 if "app_user" in wm else {})},
            {"name": "profile", "key": "user_id", **({"watermark_column": wm["profile"]}
                                                     if "profile" in wm else {})}]},
        capture={"mode": mode, "soft_delete_column": "is_active = 0", "lookback_seconds": 0.5,
                 **capture},
        mapping={"user_properties": {"email_address": "email", "phone_number": "phone",
                                     "marketing_notification_consent": "marketing"},
                 "custom_user_properties": {}, "empty_as_null": True})


# ----------------------------------------------------------------------------- config


def test_source_tables_config_errors_name_the_entry_and_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with pytest.raises(ConfigError) as info:
        make_config(url, "sqlite://", source={"tables": [{"name": "users"}]})
    assert "[[source.tables]] entry 1: key is missing" in str(info.value)
    with pytest.raises(ConfigError, match=r"\[\[source.tables\]\] goes with `query`"):
        make_config(url, "sqlite://", source={"tables": [{"name": "users", "key": "id"}]})
    with pytest.raises(ConfigError) as info:
        make_config(url, "sqlite://", source={"table": None, "query": QUERY,
                                              "tables": [{"name": "a b", "key": "id"}]})
    assert "[[source.tables]] entry 1: name must be a plain SQL identifier" in str(info.value)
    with pytest.raises(ConfigError, match="names a table twice"):
        make_config(url, "sqlite://", source={"table": None, "query": QUERY, "tables": [
            {"name": "a", "key": "id"}, {"name": "a", "key": "id"}]})
    with pytest.raises(ConfigError, match="both given"):
        tables_config(url, tmp_path, "watermark", watermarks={"profile": "updated_at"},
                      watermark_column="updated_at")
    with pytest.raises(ConfigError, match="empty_as_null names nickname"):
        make_config(url, "sqlite://", mapping={"empty_as_null": ["nickname"]})
    with pytest.raises(ConfigError, match="soft_delete_column must be a column or one SQL"):
        make_config(url, "sqlite://", capture={"soft_delete_column": "1; DROP TABLE x"})


def test_blind_spots_say_what_a_mode_misses_and_suggest_the_outbox(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    assert tables_read(QUERY) == ["app_user", "profile"]
    partial = blind_spots(tables_config(url, tmp_path, "watermark",
                                        watermarks={"profile": "updated_at"}))
    assert any("app_user has no watermark_column" in n and 'mode = "outbox"' in n
               for n in partial)
    assert any("QuerySet.update()" in n and "profile.updated_at" in n for n in partial)
    one_table = make_config(url, "sqlite://", capture={"mode": "watermark",
                                                        "watermark_column": "updated_at"})
    assert len(blind_spots(one_table)) == 1 and "auto_now" in blind_spots(one_table)[0]
    assert blind_spots(tables_config(url, tmp_path, "outbox")) == []
    assert blind_spots(make_config(url, "sqlite://")) == []   # snapshot sees everything


# ----------------------------------------------------------------------------- mapping helpers


def test_empty_strings_are_null_globally_or_per_column() -> None:
    from syncer.config import MappingConfig

    props = {"email_address": "email", "phone_number": "phone"}
    row = RawRow(1, None, False, {"email": "", "phone": "  "})
    everywhere = Mapping(MappingConfig(user_properties=props,
                                       empty_as_null=True), bytes(16)).record(row)
    assert everywhere.payload is not None and everywhere.payload.user_properties == ()
    assert everywhere.problems == ()
    email_only = Mapping(MappingConfig(user_properties=props,
                                       empty_as_null=["email"]), bytes(16)).record(row)
    assert [p.field for p in email_only.problems] == ["phone_number"]
    plain = Mapping(MappingConfig(user_properties=props),
                    bytes(16)).record(row)
    assert {p.field for p in plain.problems} == {"phone_number", "email_address"}


# ----------------------------------------------------------------------------- outbox


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_outbox_on_a_view_says_where_triggers_go(source_url: str, tmp_path: Path) -> None:
    create_app(source_url)
    execute(source_url, "CREATE VIEW user_view AS SELECT u.id, u.email, p.phone FROM app_user u "
                        "LEFT JOIN profile p ON p.user_id = u.id")
    config = make_config(source_url, f"sqlite:///{tmp_path / 'state.db'}",
                         source={"table": "user_view"}, capture={"mode": "outbox"},
                         mapping={"user_properties": {"email_address": "email"},
                                  "custom_user_properties": {}})
    for run in (ob.sql, ob.install):
        with pytest.raises(ConfigError) as info:
            run(config)
        assert "is a view" in str(info.value) and "[[source.tables]]" in str(info.value)
    query = make_config(source_url, "sqlite://", source={"table": None, "query": QUERY},
                        capture={"mode": "outbox"})
    with pytest.raises(ConfigError, match=r"declare the tables the query reads"):
        ob.sql(query)


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql"], indirect=True)
def test_outbox_triggers_on_every_table_and_their_health(source_url: str, tmp_path: Path,
                                                         sandbox_app: SandboxApp) -> None:
    create_app(source_url)
    config = tables_config(source_url, tmp_path, "outbox")
    ob.install(config)
    assert once(config, sandbox_app).counts["updated"] == 5
    execute(source_url, "UPDATE app_user SET last_login = modified")   # not in the query
    execute(source_url, "UPDATE profile SET marketing = 0 WHERE user_id IN (1, 2)")
    execute(source_url, "UPDATE app_user SET email = '' WHERE id = 3")   # '' is NULL
    execute(source_url, "DELETE FROM profile WHERE user_id = 4")          # a change, no deletion
    execute(source_url, "UPDATE app_user SET is_active = 0 WHERE id = 5")
    second = once(config, sandbox_app)
    assert second.counts["scanned"] == 5   # last_login is not watched
    assert second.counts["updated"] == 4 and second.counts["deleted"] == 1
    assert second.counts.get("field_problems", 0) == 0
    assert set(sandbox_app.snapshot()["users"]) == {"1", "2", "3", "4"}
    rt = Runtime(config)
    try:
        assert rt.capture(False).position(rt.ctx)["triggers"] == \
            "healthy on app_user, profile"
        execute(source_url, 'DROP TRIGGER "syncer_outbox_on_profile_del"'
                + (" ON profile" if kind_of(source_url) == "postgresql" else ""))
        health = rt.capture(False).position(rt.ctx)["triggers"]
    finally:
        rt.close()
    assert health == "profile: no delete trigger: run `syncer outbox install` again"
    ob.uninstall(config)
    assert "DROP TRIGGER" in ob.sql(config, uninstall=True)


# ----------------------------------------------------------------------------- watermark


@pytest.mark.parametrize("source_url", ["sqlite", "postgresql", "mariadb"], indirect=True)
def test_a_watermark_per_table_with_a_cursor_each(source_url: str, tmp_path: Path,
                                                  sandbox_app: SandboxApp) -> None:
    create_app(source_url)
    config = tables_config(source_url, tmp_path, "watermark",
                           watermarks={"app_user": "modified", "profile": "updated_at"})
    first = once(config, sandbox_app)
    assert first.kind == "reconcile" and first.counts["updated"] == 5
    time.sleep(0.6)   # the rows stamped so far fall out of the lookback (0.5 s) of what follows
    execute(source_url, f"UPDATE app_user SET email = 'new1@ex.com', modified = "
                        f"{now_sql(source_url)} WHERE id = 1")
    execute(source_url, f"UPDATE profile SET marketing = 0, updated_at = {now_sql(source_url)} "
                        "WHERE user_id = 2")
    second = once(config, sandbox_app)
    assert second.kind == "incremental" and second.counts["updated"] == 2
    assert sandbox_app.snapshot()["users"]["1"]["user_properties"]["email_address"] == \
        "new1@ex.com"
    rt = Runtime(config)
    try:
        assert rt.state.cursors.get("watermark") is None
        for table in ("app_user", "profile"):
            assert rt.state.cursors.get(cursor_name(table)) is not None
        position = rt.capture(False).position(rt.ctx)
    finally:
        rt.close()
    marks: Any = position["watermarks"]
    assert set(marks) == {"app_user", "profile"}
    index = str(marks["profile"]["index"])
    assert "SELECT" not in index
    if index != "used":
        assert "profile" in index and "updated_at" in index
    # a change that does not move a watermark waits for the reconcile
    execute(source_url, "UPDATE profile SET phone = '010-9999-0003' WHERE user_id = 3")
    assert requests(once(config, sandbox_app)) == {}
    assert once(config, sandbox_app, reconcile=True).counts["updated"] == 1


def test_index_advice_on_a_query_names_no_query(tmp_path: Path) -> None:
    from syncer.capture.watermark import index_used

    url = f"sqlite:///{tmp_path / 'app.db'}"
    create_app(url)
    config = make_config(url, f"sqlite:///{tmp_path / 'state.db'}",
                         source={"table": None, "query": QUERY + " WHERE p.updated_at IS NULL"
                                 " OR 1 = 1"},
                         capture={"mode": "snapshot"},
                         mapping={"user_properties": {"email_address": "email"},
                                  "custom_user_properties": {}})
    rt = Runtime(config)
    try:
        advice = index_used(rt.source, "marketing")
    finally:
        rt.close()
    assert "[[source.tables]]" in advice and "CREATE INDEX" not in advice


def test_plan_explains_the_soft_delete_expression(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    create_app(url)
    execute(url, "UPDATE app_user SET is_active = 0 WHERE id = 1")
    config = tables_config(url, tmp_path, "snapshot")
    result = commands.plan(config)
    assert "is_active = 0" in str(result.position["soft_delete"])
    bad = tables_config(url, tmp_path, "snapshot", soft_delete_column="NOT no_such_column")
    with pytest.raises(ConfigError, match="soft_delete_column = 'NOT no_such_column'"):
        commands.plan(bad)
