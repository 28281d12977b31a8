"""The audit trail across a kill -9 mid-pass: it holds exactly what the state records as
delivered (same transaction), and nothing the destination did not acknowledge."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import sqlalchemy as sa

from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer

from .helpers import (
    create_users_table,
    insert_users,
    start_daemon,
    stop,
    user_row,
    wait_for,
    write_config,
)

USERS = 6000


def trail_and_deliveries(state: str) -> tuple[list[str], set[str]]:
    """Users with a delivered Blux update in the trail (one item per entry), and the users the
    state records as delivered to Blux."""
    engine = sa.create_engine(state)
    with engine.connect() as conn:
        trail = [r[0] for r in conn.execute(sa.text(
            "SELECT user_id FROM syncer_history WHERE endpoint = 'blux.update' "
            "AND result = 'delivered'"))]
        delivered = {r[0] for r in conn.execute(sa.text(
            "SELECT user_id FROM syncer_deliveries WHERE destination = 'blux' AND NOT deleted"))}
    engine.dispose()
    return trail, delivered


@pytest.mark.slow
def test_kill_9_mid_pass_leaves_the_trail_as_the_destination_acknowledged(
        tmp_path: Path, pg_url: str) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, USERS + 1)])
    app = SandboxApp(SandboxConfig(), Faults(seed=13, latency_seconds=0.05))
    state = f"sqlite:///{tmp_path / 'state.db'}"
    with SandboxServer(app) as server:
        config = write_config(tmp_path, pg_url, server, state)
        first = start_daemon(config, log=tmp_path / "first.log")
        wait_for(lambda: len(app.snapshot()["users"]) >= 1500, timeout=120)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        acknowledged = set(app.snapshot()["users"])
        assert len(acknowledged) < USERS
        trail, delivered = trail_and_deliveries(state)
        # Never more than the destination acknowledged; exactly what the state records.
        assert trail and set(trail) <= acknowledged
        assert len(trail) == len(set(trail)) and set(trail) == delivered
        second = start_daemon(config, log=tmp_path / "second.log")
        try:
            wait_for(lambda: len(trail_and_deliveries(state)[1]) == USERS, timeout=120)
        finally:
            assert stop(second) == 0
    trail, delivered = trail_and_deliveries(state)
    assert set(trail) == delivered == set(app.snapshot()["users"])
    # A user sent again after the kill (in flight, or acknowledged but not yet recorded) has
    # one entry: the state had nothing of it, so the trail says what was recorded, once.
    assert len(trail) == USERS
