"""The live lane: withdrawals and deletions overtake bulk work, stale bulk readings never land
over newer ones, and a burst of small commits shares requests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from syncer.config import BluxConfig
from syncer.deliver import Deliverer
from syncer.destinations.blux import BluxUpdate
from syncer.examine import Work
from syncer.live import Turn, turn
from syncer.model import LIVE, NORMAL, URGENT, Endpoint, Op, UserRecord
from syncer.report import bulk_line
from syncer.results import BulkProgress
from syncer.retry import RetryPolicy
from syncer.sandbox import SandboxApp, SandboxServer, mock_transport

from .helpers import (
    SANDBOX,
    create_users_table,
    execute,
    free_port,
    get,
    insert_users,
    start_daemon,
    stop,
    user_row,
    wait_for,
    write_config,
)
from .test_crash import differences, mirror_matches
from .test_e2e import check_rates, syncer

# -- the rule, per user -------------------------------------------------------------------------


def _work(uid: str, seq: int, live: bool, priority: int = NORMAL) -> Work:
    op = Op(Endpoint.BLUX_UPDATE, uid, priority=priority - (LIVE if live else 0))
    record = UserRecord(uid, int(uid), None, deleted=False)
    return Work(record, None, int(uid), None, [op], live=live, seq=seq)


def test_a_live_reading_replaces_a_queued_bulk_one_and_waits_behind_one_on_its_way() -> None:
    """DBLog's rule: the bulk reading of user 1 is still queued when a live change of it is
    examined: it is taken back, and only the live one is sent. User 2's bulk reading already
    has an outcome (it was sent): the live one waits and is examined again after it."""
    blux = BluxConfig.model_validate({"base_url": "http://sandbox/blux",
                                      "application_id": SANDBOX.blux_application_id,
                                      "secret_key": SANDBOX.blux_secret_key})

    async def go() -> None:
        async with httpx.AsyncClient(transport=mock_transport(SandboxApp())) as client:
            deliverer = Deliverer([BluxUpdate(blux)], client, RetryPolicy(), lambda o: None,
                                  feeding=True)   # not entered: nothing leaves the queues
            bulk1, bulk2 = _work("1", 1, False), _work("2", 1, False)
            deliverer.submit(bulk1.ops + bulk2.ops)
            assert turn(bulk1, _work("1", 2, True), deliverer.cancel) is Turn.REPLACE
            assert deliverer.cancel(bulk1.ops) is False   # taken back once: gone
            bulk2.outcomes.append(object())  # type: ignore[arg-type]  # one answer came
            assert turn(bulk2, _work("2", 2, True), deliverer.cancel) is Turn.PARK
            assert turn(None, _work("3", 2, True), deliverer.cancel) is Turn.SEND
            # A bulk reading of a user the live lane holds, or an older reading: dropped.
            live4 = _work("4", 3, True)
            assert turn(live4, _work("4", 4, False), deliverer.cancel) is Turn.DROP
            assert turn(live4, _work("4", 2, True), deliverer.cancel) is Turn.DROP

    asyncio.run(go())


def test_bulk_progress_says_how_far_and_how_long_is_left() -> None:
    bulk = BulkProgress("initial", 60_000, 15_000, 1000.0, 1010.0)
    assert bulk.eta_seconds() == pytest.approx(30.0)
    assert BulkProgress.from_json(bulk.to_json()) == bulk
    assert BulkProgress.from_json("not json") is None
    assert BulkProgress.from_json(None) is None
    line = bulk_line(bulk, 1012.0)
    assert "initial load, 15000 of 60000 users (25%), about 30 s left (as of 2 s ago)" in line
    assert BulkProgress("backlog", 10, 0, 5.0, 5.0).eta_seconds() is None


def test_live_operations_go_ahead_of_bulk_ones_of_their_kind() -> None:
    order = sorted([("bulk normal", NORMAL), ("live normal", NORMAL - LIVE),
                    ("bulk urgent", URGENT), ("live urgent", URGENT - LIVE)], key=lambda x: x[1])
    assert [name for name, _ in order] == ["live urgent", "bulk urgent", "live normal",
                                           "bulk normal"]


# -- end to end, with the daemon --------------------------------------------------------------


def _until_loaded(app: SandboxApp, url: str, total: int, timeout: float) -> None:
    """Wait for the load to end, looking rarely (a look at a large mirror takes the sandbox's
    lock and the test process's CPU, which would delay the requests it stamps), then check
    the mirror."""
    deadline = time.monotonic() + timeout
    while len(app.ever_updated()) < total and time.monotonic() < deadline:
        time.sleep(0.5)
    try:
        wait_for(lambda: mirror_matches(app, url), timeout=60)
    except AssertionError:
        raise AssertionError(differences(app, url)) from None


def _landed(app: SandboxApp, uid: str, endpoint: str) -> float | None:
    times = [at for ep, at in app.landed(uid) if ep == endpoint]
    return times[-1] if times else None


def _consent(app: SandboxApp, uid: str) -> Any:
    user = app.user(uid)
    return None if user is None else user["user_properties"].get(
        "marketing_notification_consent")


def _overtake(app: SandboxApp, url: str, total: int, *, timeout: float) -> dict[str, float]:
    """Once users 5 and 7 are at Blux (early in the load), withdraw 5's consent and delete 7;
    return how long each took to land, and how far the load was then."""
    app.watch("5", "7")
    wait_for(lambda: _consent(app, "5") is True and app.user("7") is not None, timeout=120)
    committed = time.monotonic()
    execute(url, "UPDATE users SET marketing = 0 WHERE id = 5")
    execute(url, "DELETE FROM users WHERE id = 7")

    def arrived() -> bool:
        return (_consent(app, "5") is False and _landed(app, "7", "blux.delete") is not None
                and _landed(app, "7", "nachocode.withdraw") is not None)

    wait_for(arrived, timeout=timeout)
    loaded = len(app.ever_updated())
    withdrawal = [at for ep, at in app.landed("5") if ep == "blux.update"][-1]
    deletion = max(_landed(app, "7", "blux.delete") or 0.0,
                   _landed(app, "7", "nachocode.withdraw") or 0.0)
    result = {"withdrawal": withdrawal - committed, "deletion": deletion - committed,
              "loaded_then": loaded}
    print(f"landed during the load: {result}")
    # Both landed while most of the load was still to go (it takes ~total/2000 seconds).
    assert loaded < total * 0.8, result
    return result


@pytest.mark.slow
@pytest.mark.postgresql
def test_withdrawal_and_deletion_overtake_an_initial_load_in_outbox_mode(
        tmp_path: Path, pg_url: str) -> None:
    """PostgreSQL, outbox mode, a 60 s interval, the documented rates: a 60,000-user initial
    load takes ~30 s; a consent withdrawal and a hard delete of users already delivered,
    committed early in it, land long before it ends. Then the load completes, the mirror is
    equal, and no second holds more requests than an endpoint's rate."""
    total = 60_000
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i, marketing=1) for i in range(1, total + 1)])
    app = SandboxApp(SANDBOX)
    with SandboxServer(app) as server:
        port = free_port()
        config = write_config(tmp_path, pg_url, server, f"sqlite:///{tmp_path / 'state.db'}",
                              interval=60, mode="outbox", metrics_port=port)
        installed = syncer("outbox", "install", "-c", str(config))
        assert installed.returncode == 0, installed.stderr
        daemon = start_daemon(config, log=tmp_path / "daemon.log")
        try:
            _overtake(app, pg_url, total, timeout=60)
            # The bulk work shows in `status` and in the metrics while it goes on.
            status = syncer("status", "-c", str(config))
            assert "bulk work: initial load" in status.stdout, status.stdout
            assert f"of {total} users" in status.stdout
            _, metrics = get(f"http://127.0.0.1:{port}/metrics")
            assert f'syncer_bulk_users{{kind="initial"}} {total}.0' in metrics
            _until_loaded(app, pg_url, total, timeout=180)
            wait_for(lambda: "bulk work" not in syncer("status", "-c", str(config)).stdout,
                     timeout=30)
        finally:
            assert stop(daemon) == 0
    assert set(app.snapshot()["withdrawn_user_ids"]) == {"7"}
    check_rates(app)


@pytest.mark.slow
@pytest.mark.postgresql
def test_withdrawal_and_deletion_overtake_an_initial_load_in_watermark_mode(
        tmp_path: Path, pg_url: str) -> None:
    """Watermark mode: the same lands within about one interval while the load goes on (a
    hard delete is no watermark change: it waits for a reconcile, so only the withdrawal and
    a soft delete are looked for here)."""
    total = 20_000
    create_users_table(pg_url)
    execute(pg_url, "ALTER TABLE users ADD COLUMN updated_at timestamptz NOT NULL "
                    "DEFAULT now()")
    execute(pg_url, "CREATE INDEX ON users (updated_at)")
    insert_users(pg_url, [user_row(i, marketing=1) for i in range(1, total + 1)])
    app = SandboxApp(SANDBOX)
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server, f"sqlite:///{tmp_path / 'state.db'}",
                              interval=2, mode="watermark", watermark_column="updated_at")
        daemon = start_daemon(config, log=tmp_path / "daemon.log")
        try:
            app.watch("5", "7")
            wait_for(lambda: _consent(app, "5") is True and app.user("7") is not None,
                     timeout=120)
            committed = time.monotonic()
            execute(pg_url, "UPDATE users SET marketing = 0, updated_at = now() WHERE id = 5")
            execute(pg_url, "UPDATE users SET deleted_at = 'yes', updated_at = now() "
                            "WHERE id = 7")
            wait_for(lambda: _consent(app, "5") is False
                     and _landed(app, "7", "nachocode.withdraw") is not None, timeout=60)
            loaded = len(app.ever_updated())
            print(f"landed {time.monotonic() - committed:.2f}s after the commit, "
                  f"{loaded} users loaded then")
            assert loaded < total * 0.9
            _until_loaded(app, pg_url, total, timeout=120)
        finally:
            assert stop(daemon) == 0
    check_rates(app)


@pytest.mark.slow
@pytest.mark.postgresql
def test_a_burst_of_single_user_commits_shares_requests(tmp_path: Path, pg_url: str) -> None:
    """300 commits of one user each, one after the other, reach Blux in a handful of
    requests, not 300."""
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 1001)])
    app = SandboxApp(SANDBOX)
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server, f"sqlite:///{tmp_path / 'state.db'}",
                              interval=60, mode="outbox")
        assert syncer("outbox", "install", "-c", str(config)).returncode == 0
        daemon = start_daemon(config, log=tmp_path / "daemon.log")
        try:
            wait_for(lambda: len(app.ever_updated()) == 1000, timeout=60)
            time.sleep(1.0)   # the first pass has ended
            before = app.snapshot()["requests"]["blux.update"]["total"]
            engine = sa.create_engine(pg_url)
            with engine.connect() as conn:   # one transaction per user, back to back
                for i in range(1, 301):
                    conn.execute(sa.text("UPDATE users SET name = :n WHERE id = :i"),
                                 {"n": f"burst {i}", "i": i})
                    conn.commit()
            engine.dispose()
            wait_for(lambda: mirror_matches(app, pg_url), timeout=60)
        finally:
            assert stop(daemon) == 0
    used = app.snapshot()["requests"]["blux.update"]["total"] - before
    print(f"300 single-user commits took {used} blux.update requests")
    assert used <= 15
