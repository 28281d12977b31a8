"""Property: whatever sequence of inserts, updates, soft and hard deletes and passes happens, with
whatever API faults, in each capture mode, the destinations end equal to the source."""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncer import logs
from syncer.capture import outbox_ddl as ob
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, mock_transport

from .helpers import create_users_table, execute, expected_blux, make_config, pg_url_for

KEYS = st.integers(1, 12)
NAMES = st.sampled_from(["a", "b", "김민서", "x y"])
FAULTS = st.fixed_dictionaries({
    "error_rate": st.sampled_from([0.0, 0.3, 0.8, 1.0]),
    "hang_rate": st.sampled_from([0.0, 0.0, 0.2]),
    "nachocode_disabled": st.booleans(),
})
STEP = st.one_of(
    st.tuples(st.just("insert"), KEYS, NAMES),
    st.tuples(st.just("rename"), KEYS, NAMES),
    st.tuples(st.just("consent"), KEYS, st.sampled_from([0, 1])),
    st.tuples(st.just("unmapped"), KEYS, st.just("")),
    st.tuples(st.just("soft_delete"), KEYS, st.just("")),
    st.tuples(st.just("undelete"), KEYS, st.just("")),
    st.tuples(st.just("hard_delete"), KEYS, st.just("")),
    st.tuples(st.just("pass"), st.just(0), FAULTS),
    st.tuples(st.just("pass"), st.just(0), FAULTS),
)


class App:
    """The application's database, changed the way an app would (timestamps always move)."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url)
        self.clock = itertools.count(1)

    def now(self) -> str:
        moment = dt.datetime(2026, 1, 1) + dt.timedelta(milliseconds=next(self.clock))
        return moment.isoformat(" ", "microseconds")

    def run(self, sql: str, params: tuple[Any, ...]) -> None:
        names = {f"p{i}": v for i, v in enumerate(params)}
        for i in range(len(params)):
            sql = sql.replace("?", f":p{i}", 1)
        with self.engine.begin() as conn:
            conn.execute(sa.text(sql), names)

    def apply(self, step: tuple[str, int, Any]) -> None:
        kind, key, value = step
        if kind == "insert":
            with self.engine.connect() as conn:
                if conn.execute(sa.text("SELECT 1 FROM users WHERE id = :k"),
                                {"k": key}).first():
                    return
            self.run("INSERT INTO users (id, name, phone, email, marketing, sms, "
                     "points, touched, deleted_at, updated_at) VALUES (?, ?, ?, ?, 1, 'Y', ?, "
                     "'t', NULL, ?)", (key, value, f"010-1234-{1000 + key}",
                                      f"u{key}@example.com", key, self.now()))
        elif kind == "rename":
            self.run("UPDATE users SET name = ?, updated_at = ? WHERE id = ?",
                     (value, self.now(), key))
        elif kind == "consent":
            self.run("UPDATE users SET marketing = ?, updated_at = ? WHERE id = ?",
                     (value, self.now(), key))
        elif kind == "unmapped":
            self.run("UPDATE users SET touched = ? WHERE id = ?", (self.now(), key))
        elif kind == "soft_delete":
            self.run("UPDATE users SET deleted_at = ?, updated_at = ? WHERE id = ? "
                     "AND deleted_at IS NULL", (self.now(), self.now(), key))
        elif kind == "undelete":
            self.run("UPDATE users SET deleted_at = NULL, updated_at = ? WHERE id = ?",
                     (self.now(), key))
        elif kind == "hard_delete":
            self.run("DELETE FROM users WHERE id = ?", (key,))

    def rows(self) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            return {str(r["id"]): dict(r) for r in
                    conn.execute(sa.text("SELECT * FROM users")).mappings()}


def converge(config: Any, app: SandboxApp, reconcile: bool = False) -> None:
    """Faults off, an hour later (a user quarantined for 5xx of its own is tried again then);
    ordinary passes until one has nothing to do (and a reconcile if asked)."""
    app.faults.error_rate = app.faults.hang_rate = 0.0
    app.faults.nachocode_disabled = False
    execute(config.state.url, "UPDATE syncer_quarantine SET last_attempt = "
                              "datetime(last_attempt, '-2 hours') WHERE transient")
    rt = Runtime(config, transport=mock_transport(app))
    try:
        if reconcile:
            run_pass(rt, reconcile=True)
        for _ in range(6):
            result = run_pass(rt)
            if result.outcome == "ok" and not result.counts.get("candidates"):
                break
    finally:
        rt.close()


def check(app: SandboxApp, rows: dict[str, dict[str, Any]], deleted_ever: set[str],
          hard_deleted_may_linger: bool = False) -> None:
    snap = app.snapshot()
    alive = {uid: row for uid, row in rows.items() if row["deleted_at"] is None}
    if hard_deleted_may_linger:   # a watermark cannot see a row that is gone
        lingering = set(snap["users"]) - set(alive)
        assert all(uid not in rows for uid in lingering)
        snap["users"] = {uid: v for uid, v in snap["users"].items() if uid in alive}
    assert set(snap["users"]) == set(alive)
    for uid, row in alive.items():
        assert snap["users"][uid] == expected_blux(row), uid
    reached_blux = app.ever_updated()
    for uid in deleted_ever:
        if hard_deleted_may_linger and uid not in rows:
            continue
        if uid not in alive and uid in reached_blux:
            # a user Blux had and the app deleted is deleted there and withdrawn at nachocode
            assert uid in snap["deleted_user_ids"], uid
            assert uid in snap["withdrawn_user_ids"], uid


def scenario(mode: str, steps: list[tuple[str, int, Any]], pg: sa.Engine | None = None) -> None:
    logs.configure("error", json=True)
    workdir = Path(tempfile.mkdtemp(prefix="syncer-prop-"))
    schema = f"p_{uuid.uuid4().hex[:10]}"
    try:
        if pg is None:
            src = f"sqlite:///{workdir / 'app.db'}"
            create_users_table(src, key_type="INTEGER")
        else:
            with pg.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            src = pg_url_for(schema)
            create_users_table(src)
        execute(src, "ALTER TABLE users ADD COLUMN updated_at VARCHAR(40)")
        config = make_config(src, f"sqlite:///{workdir / 'state.db'}",
                             capture={"mode": mode, "watermark_column": "updated_at",
                                      "lookback_seconds": 0, "max_delete_fraction": 1.0},
                             delivery={"max_attempts": 2})
        if mode == "outbox":
            ob.install(config)
        app = SandboxApp(SandboxConfig(update_rate=1000, delete_rate=1000, withdraw_rate=1000),
                         Faults(seed=len(steps)))
        database = App(src)
        deleted_ever: set[str] = set()
        rt = Runtime(config, transport=mock_transport(app))
        try:
            for step in steps:
                if step[0] == "pass":
                    faults = step[2]
                    app.faults.error_rate = faults["error_rate"]
                    app.faults.hang_rate = faults["hang_rate"]
                    app.faults.nachocode_disabled = faults["nachocode_disabled"]
                    run_pass(rt)
                else:
                    database.apply(step)
                    if step[0] in ("soft_delete", "hard_delete"):
                        deleted_ever.add(str(step[1]))
        finally:
            rt.close()
        converge(config, app)
        check(app, database.rows(), deleted_ever, hard_deleted_may_linger=mode == "watermark")
        if mode == "watermark":
            converge(config, app, reconcile=True)
            check(app, database.rows(), deleted_ever)
        database.engine.dispose()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if pg is not None:
            with pg.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))


PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(STEP, min_size=1, max_size=25))
def test_snapshot_mode_converges(steps: list[tuple[str, int, Any]]) -> None:
    scenario("snapshot", steps)


@PROPERTY
@given(st.lists(STEP, min_size=1, max_size=25))
def test_watermark_mode_converges(steps: list[tuple[str, int, Any]]) -> None:
    scenario("watermark", steps)


@PROPERTY
@given(st.lists(STEP, min_size=1, max_size=25))
def test_outbox_mode_converges(steps: list[tuple[str, int, Any]]) -> None:
    scenario("outbox", steps)


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    from syncer.capture import snapshot

    monkeypatch.setattr(snapshot, "BLOCK", 3)   # many key ranges over twelve keys


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(STEP, min_size=1, max_size=25))
def test_snapshot_by_key_ranges_on_postgres_converges(
        pg_admin: sa.Engine, small_ranges: None, steps: list[tuple[str, int, Any]]) -> None:
    """Every key exists and was delivered before the random steps, so the ranges are many."""
    everyone: list[tuple[str, int, Any]] = [("insert", k, "a") for k in range(1, 13)]
    clean = {"error_rate": 0.0, "hang_rate": 0.0, "nachocode_disabled": False}
    scenario("snapshot", [*everyone, ("pass", 0, clean), *steps], pg=pg_admin)
