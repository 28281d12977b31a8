"""The production daemon: systemd notify, watchdog, graceful stop, one sender with takeover,
outages, metrics and health, operator commands."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer import commands
from syncer.daemon import Daemon
from syncer.model import RawRow
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer, mock_transport
from syncer.sdnotify import Notifier
from syncer.source import Source

from .helpers import (
    SANDBOX,
    app_users,
    create_users_table,
    execute,
    free_port,
    get,
    insert_users,
    make_config,
    once,
    requests,
    start_daemon,
    stop,
    user_row,
    wait_for,
    write_config,
)


class NotifySocket:
    """What systemd would see: a datagram socket collecting the daemon's messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def fields(self) -> list[str]:
        return [f for _, m in self.messages for f in m.split("\n")]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


@pytest.fixture
def server() -> Iterator[SandboxServer]:
    with SandboxServer(SandboxApp(SANDBOX, Faults(seed=2))) as srv:
        yield srv


def seeded(tmp_path: Path, n: int) -> str:
    src = f"sqlite:///{tmp_path / 'app.db'}"
    create_users_table(src)
    insert_users(src, [user_row(i) for i in range(1, n + 1)])
    return src


# ---------------------------------------------------------------------- systemd notify


def test_notify_ready_status_watchdog_and_stopping(tmp_path: Path, server: SandboxServer,
                                                   notify_socket: NotifySocket) -> None:
    src = seeded(tmp_path, 50)
    config = write_config(tmp_path, src, server, f"sqlite:///{tmp_path / 'state.db'}")
    proc = start_daemon(config, {"NOTIFY_SOCKET": str(notify_socket.path),
                                 "WATCHDOG_USEC": "800000"})
    try:
        wait_for(lambda: "READY=1" in notify_socket.fields())
        wait_for(lambda: any(f.startswith("STATUS=leader: reconcile pass ok")
                             for f in notify_socket.fields()))
        wait_for(lambda: notify_socket.fields().count("WATCHDOG=1") >= 3)
        assert len(server.app.snapshot()["users"]) == 50
    finally:
        code = stop(proc)
    assert code == 0
    assert "STOPPING=1" in notify_socket.fields()
    ready = next(i for i, (_, m) in enumerate(notify_socket.messages) if "READY=1" in m)
    first_status = next(i for i, (_, m) in enumerate(notify_socket.messages)
                        if "STATUS=leader" in m)
    assert ready < first_status


class HangingSource(Source):
    """A source whose scan blocks until released (a query stuck on a lock, say)."""

    release = threading.Event()
    hanging = threading.Event()

    def hash_scan(self, low: int | None = None, high: int | None = None) -> Iterator[RawRow]:
        if not HangingSource.release.is_set():
            HangingSource.hanging.set()
            HangingSource.release.wait(60)
        return super().hash_scan()


def test_watchdog_pings_stop_while_a_pass_hangs(tmp_path: Path, sandbox_app: SandboxApp,
                                                notify_socket: NotifySocket) -> None:
    src = seeded(tmp_path, 10)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         schedule={"interval_seconds": 0.2})
    probe = Runtime(config)
    source = HangingSource(config.source, config.capture, probe.mapping.columns,
                           probe.row_hash_seed)
    probe.close()
    HangingSource.release.clear()
    HangingSource.hanging.clear()
    notifier = Notifier({"NOTIFY_SOCKET": str(notify_socket.path), "WATCHDOG_USEC": "400000"})
    rt = Runtime(config, source=source, transport=mock_transport(sandbox_app))
    daemon = Daemon(config, rt, notifier=notifier)
    daemon.query_allowance = 0.3   # in production: the statement timeout and a minute more
    watchdog = threading.Thread(target=daemon._watchdog, daemon=True)
    watchdog.start()
    try:
        time.sleep(0.5)
        assert notify_socket.fields().count("WATCHDOG=1") >= 2    # idle: alive
        daemon.start()
        assert HangingSource.hanging.wait(10)
        time.sleep(0.3)        # past the stuck threshold (half the watchdog interval)
        before = notify_socket.fields().count("WATCHDOG=1")
        time.sleep(1.0)
        assert notify_socket.fields().count("WATCHDOG=1") == before   # no pings while stuck
        HangingSource.release.set()
        wait_for(lambda: daemon.passes >= 1)
        wait_for(lambda: notify_socket.fields().count("WATCHDOG=1") > before)
    finally:
        HangingSource.release.set()
        daemon.stop.set()
        daemon.shutdown()


# ---------------------------------------------------------------------- graceful stop


@pytest.mark.slow
def test_sigterm_mid_backlog_records_what_was_delivered_and_exits_0(
        tmp_path: Path) -> None:
    src = seeded(tmp_path, 3000)
    app = SandboxApp(SandboxConfig(), Faults(latency_seconds=0.3))
    with SandboxServer(app) as srv:
        config = write_config(tmp_path, src, srv, f"sqlite:///{tmp_path / 'state.db'}")
        proc = start_daemon(config, log=tmp_path / "daemon.log")
        wait_for(lambda: len(app.snapshot()["users"]) >= 500)
        code = stop(proc)
        assert code == 0
        delivered = set(app.snapshot()["users"])
        assert 500 <= len(delivered) < 3000
        before = app.snapshot()["requests"]["blux.update"]["total"]
        rest = subprocess.run([sys.executable, "-m", "syncer", "once", "-c", str(config)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert rest.returncode == 0, rest.stdout + rest.stderr
        sent_again = app.snapshot()["requests"]["blux.update"]["total"] - before
        # only what was not recorded goes again: at most the batches that were in flight
        assert sent_again <= (3000 - len(delivered)) // 100 + 1 + 20
        assert set(app.snapshot()["users"]) == set(app_users(src))
    log_text = (tmp_path / "daemon.log").read_text()
    assert "daemon.stopping" in log_text and "daemon.stopped" in log_text


@pytest.mark.slow
def test_ctrl_c_during_once_stops_gracefully_and_exits_130(tmp_path: Path) -> None:
    from syncer.state.sql import SqlStateStore

    src = seeded(tmp_path, 2000)
    state = f"sqlite:///{tmp_path / 'state.db'}"
    app = SandboxApp(SandboxConfig(), Faults(latency_seconds=0.3))
    with SandboxServer(app) as srv:
        config = write_config(tmp_path, src, srv, state)
        config.write_text(config.read_text().replace(   # 10 users a call: a pass of 10 s
            "[nachocode]", "update_batch_size = 10\n\n[nachocode]", 1))
        command = [sys.executable, "-m", "syncer", "once", "-c", str(config)]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        wait_for(lambda: len(app.snapshot()["users"]) >= 300)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, out + err
        delivered = set(app.snapshot()["users"])
        assert 300 <= len(delivered) < 2000
        assert f"stopped: {len(delivered)} delivered, {2000 - len(delivered)} left for the " \
               "next pass" in out, out + err
        assert "Aborted" not in out + err and "Traceback" not in err
        store = SqlStateStore.from_url(state)
        try:
            (stopped,) = store.passes.recent(10)
            assert stopped.outcome == "stopped", stopped.message
            assert stopped.counts["updated"] == len(delivered)   # every delivery recorded
        finally:
            store.close()
        rest = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert rest.returncode == 0, rest.stdout + rest.stderr
        store = SqlStateStore.from_url(state)
        try:
            assert store.passes.recent(1)[0].counts["updated"] == 2000 - len(delivered)
        finally:
            store.close()
        assert set(app.snapshot()["users"]) == set(app_users(src))


# ---------------------------------------------------------------------- one sender


@pytest.mark.slow
@pytest.mark.parametrize("state", ["sqlite", "postgresql"])
def test_two_daemons_one_sender_and_takeover(tmp_path: Path, server: SandboxServer,
                                             state: str, request: pytest.FixtureRequest) -> None:
    src = seeded(tmp_path, 20)
    state_url = (f"sqlite:///{tmp_path / 'state.db'}" if state == "sqlite"
                 else str(request.getfixturevalue("pg_state_url")))
    ports = [free_port(), free_port()]
    configs = [write_config(tmp_path, src, server, state_url, metrics_port=p) for p in ports]
    first = start_daemon(configs[0], log=tmp_path / "first.log")
    wait_for(lambda: get(f"http://127.0.0.1:{ports[0]}/healthz")[1] is not None
             and get(f"http://127.0.0.1:{ports[0]}/healthz")[1]["role"] == "leader")
    second = start_daemon(configs[1], log=tmp_path / "second.log")
    try:
        wait_for(lambda: (get(f"http://127.0.0.1:{ports[1]}/healthz")[1] or {})
                 .get("role") == "standby")
        code, health = get(f"http://127.0.0.1:{ports[1]}/healthz")
        assert code == 200 and health["status"] == "standby" and health["sender"]
        # the standby never sends: only the leader's passes reach the sandbox
        status = subprocess.run([sys.executable, "-m", "syncer", "status", "-c",
                                 str(configs[1])], capture_output=True, text=True, timeout=60,
                                check=False)
        assert "sender:" in status.stdout and "none running" not in status.stdout
        busy = subprocess.run([sys.executable, "-m", "syncer", "once", "-c", str(configs[1])],
                              capture_output=True, text=True, timeout=60, check=False)
        assert busy.returncode == 1 and "is sending for this state" in busy.stderr
        first.send_signal(signal.SIGKILL)       # the sender dies without a word
        first.wait(timeout=30)
        wait_for(lambda: (get(f"http://127.0.0.1:{ports[1]}/healthz")[1] or {})
                 .get("role") == "leader")
        execute(src, "UPDATE users SET name = 'after takeover' WHERE id = 1")
        wait_for(lambda: server.app.snapshot()["users"]["1"]["custom_user_properties"]["name"]
                 == "after takeover")
    finally:
        for proc in (first, second):
            if proc.poll() is None:
                stop(proc)
    assert "daemon.standby" in (tmp_path / "second.log").read_text()


# ---------------------------------------------------------------------- outages


@pytest.mark.slow
def test_the_daemon_rides_out_a_postgres_restart(tmp_path: Path, pg_url: str,
                                                 server: SandboxServer) -> None:
    create_users_table(pg_url)
    insert_users(pg_url, [user_row(i) for i in range(1, 31)])
    port = free_port()
    config = write_config(tmp_path, pg_url, server, f"sqlite:///{tmp_path / 'state.db'}",
                          metrics_port=port)
    proc = start_daemon(config, log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: len(server.app.snapshot()["users"]) == 30)
        restart = subprocess.run(
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql | head -n1) main "
            "restart", shell=True, capture_output=True, text=True, timeout=120, check=False)
        assert restart.returncode == 0, restart.stderr
        wait_for(lambda: subprocess.run(["pg_isready", "-h", "127.0.0.1", "-q"],
                                        check=False).returncode == 0, timeout=60)
        execute(pg_url, "UPDATE users SET name = 'after restart' WHERE id = 5")
        execute(pg_url, "DELETE FROM users WHERE id = 6")
        wait_for(lambda: server.app.snapshot()["users"]["5"]["custom_user_properties"]["name"]
                 == "after restart", timeout=60)
        wait_for(lambda: "6" in server.app.snapshot()["withdrawn_user_ids"], timeout=60)
        assert proc.poll() is None                       # it kept running
        code, health = get(f"http://127.0.0.1:{port}/healthz")
        assert code == 200, health
    finally:
        assert stop(proc) == 0


def test_an_api_down_for_a_while_is_reported_then_caught_up(tmp_path: Path) -> None:
    src = seeded(tmp_path, 20)
    app = SandboxApp(SandboxConfig(update_rate=1000, withdraw_rate=1000, delete_rate=1000),
                     Faults(error_rate=1.0))
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         schedule={"interval_seconds": 0.2})
    daemon = Daemon(config, Runtime(config, transport=mock_transport(app)))
    daemon.start()
    try:
        wait_for(lambda: daemon.passes >= 2)
        assert daemon.last_result is not None and daemon.last_result.outcome == "partial"
        assert "blux.update" in daemon.failing
        first_seen, _ = daemon.failing["blux.update"]
        daemon.failing["blux.update"] = (first_seen - 3600, "500")   # as if an hour had passed
        ok, details = daemon.health()
        assert not ok and any("blux.update" in r for r in details["reasons"])
        app.faults.error_rate = 0.0
        wait_for(lambda: len(app.snapshot()["users"]) == 20)
        wait_for(lambda: daemon.health()[0])
    finally:
        daemon.stop.set()
        daemon.shutdown()


# ---------------------------------------------------------------------- metrics and health


def test_metrics_and_healthz(tmp_path: Path, server: SandboxServer) -> None:
    src = seeded(tmp_path, 40)
    port = free_port()
    config = write_config(tmp_path, src, server, f"sqlite:///{tmp_path / 'state.db'}",
                          metrics_port=port)
    proc = start_daemon(config, log=tmp_path / "daemon.log")
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{port}/healthz")[0] == 200
                 and get(f"http://127.0.0.1:{port}/healthz")[1].get("passes", 0) >= 1)
        execute(src, "DELETE FROM users WHERE id = 3")
        wait_for(lambda: "3" in server.app.snapshot()["withdrawn_user_ids"])
        wait_for(lambda: 'syncer_users_total{destination="nachocode",result="withdrawn"} 1.0'
                 in get(f"http://127.0.0.1:{port}/metrics")[1])
        code, text = get(f"http://127.0.0.1:{port}/metrics")
        assert code == 200
        for series in ['syncer_passes_total{kind="reconcile",outcome="ok"}',
                       'syncer_users_total{destination="blux",result="updated"} 40.0',
                       'syncer_requests_total{endpoint="blux.update",status="200"}',
                       "syncer_request_duration_seconds_bucket", "syncer_lag_seconds 0.0",
                       "syncer_last_success_timestamp_seconds", "syncer_leader 1.0",
                       'syncer_destination_up{destination="blux"} 1.0']:
            assert series in text, series
        code, health = get(f"http://127.0.0.1:{port}/healthz")
        assert code == 200 and health["status"] == "ok" and health["role"] == "leader"
        assert get(f"http://127.0.0.1:{port}/nope")[0] == 404
    finally:
        assert stop(proc) == 0


def test_healthz_is_503_while_credentials_are_refused(tmp_path: Path,
                                                      sandbox_app: SandboxApp) -> None:
    src = seeded(tmp_path, 5)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}",
                         blux={"secret_key": "wrong"}, schedule={"interval_seconds": 0.2})
    daemon = Daemon(config, Runtime(config, transport=mock_transport(sandbox_app)))
    daemon.start()
    try:
        wait_for(lambda: daemon.passes >= 1)
        ok, details = daemon.health()
        assert not ok and "blux refuses the credentials" in details["reasons"][0]
        assert "wrong" not in json.dumps(details)
    finally:
        daemon.stop.set()
        daemon.shutdown()


# ---------------------------------------------------------------------- operator commands


def test_retry_and_resync(tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = seeded(tmp_path, 30)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    sandbox_app.faults.reject_user_ids = frozenset({"7", "8"})
    first = once(config, sandbox_app)
    assert first.counts["quarantined"] == 2
    sandbox_app.faults.reject_user_ids = frozenset()
    retried = commands.retry(config, ["7"], transport=mock_transport(sandbox_app))
    assert retried.users == 1 and retried.result is not None
    assert retried.result.counts["updated"] == 1
    assert [q.user_id for q in commands.status(config).quarantined] == ["8"]
    everyone = commands.retry(config, transport=mock_transport(sandbox_app))
    assert everyone.result is not None and everyone.result.counts["updated"] == 1

    sandbox_app.reset()   # the destination was wiped
    again = commands.resync(config, ["1", "2"], transport=mock_transport(sandbox_app))
    assert again.result is not None and again.result.counts["updated"] == 2
    full = commands.resync(config, transport=mock_transport(sandbox_app))
    assert full.users == 30 and full.result is not None
    assert full.result.counts["updated"] == 30
    assert requests(once(config, sandbox_app)) == {}
    assert len(sandbox_app.snapshot()["users"]) == 30


def test_retry_counts_the_users_it_takes_out_of_quarantine(tmp_path: Path,
                                                           sandbox_app: SandboxApp) -> None:
    from syncer import lock as sender_lock

    src = seeded(tmp_path, 30)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    transport = mock_transport(sandbox_app)
    assert once(config, sandbox_app).outcome == "ok"
    nobody = commands.retry(config, transport=transport)
    assert nobody.users == 0 and nobody.result is not None
    sandbox_app.faults.reject_user_ids = frozenset({"7"})
    execute(src, "UPDATE users SET name = 'changed' WHERE id IN (5, 7)")
    assert once(config, sandbox_app).counts["quarantined"] == 1
    asked = commands.retry(config, ["5", "999999"], transport=transport)
    assert asked.users == 0
    assert asked.not_quarantined == ("5",) and asked.unknown == ("999999",)
    daemon_lock = sender_lock.for_config(config, "the-daemon:1")   # a daemon is sending
    assert daemon_lock.acquire()
    try:
        queued = commands.retry(config, ["7", "5", "999999"])
        assert queued.sender == "the-daemon:1" and queued.users == 1
        assert queued.not_quarantined == ("5",) and queued.unknown == ("999999",)
        assert commands.retry(config).users == 1
    finally:
        daemon_lock.release()
    sandbox_app.faults.reject_user_ids = frozenset()
    assert once(config, sandbox_app).counts["updated"] == 1   # the daemon's next pass
    assert commands.status(config).quarantined == []


def test_resync_with_a_new_key(tmp_path: Path, sandbox_app: SandboxApp) -> None:
    src = seeded(tmp_path, 10)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    once(config, sandbox_app)
    key_file = tmp_path / "fingerprint.key"
    old = key_file.read_text()
    result = commands.resync(config, new_key=True, transport=mock_transport(sandbox_app))
    assert key_file.read_text() != old
    assert result.result is not None and result.result.counts["updated"] == 10
    assert requests(once(config, sandbox_app)) == {}


def test_cli_retry_and_resync_usage(tmp_path: Path, server: SandboxServer) -> None:
    src = seeded(tmp_path, 5)
    config = write_config(tmp_path, src, server, f"sqlite:///{tmp_path / 'state.db'}")
    run = [sys.executable, "-m", "syncer"]
    bad = subprocess.run([*run, "resync", "-c", str(config)], capture_output=True, text=True,
                         check=False)
    assert bad.returncode == 2 and "--all" in bad.stderr
    ok = subprocess.run([*run, "resync", "--all", "-c", str(config)], capture_output=True,
                        text=True, check=False, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "sending them now" in ok.stdout
    none = subprocess.run([*run, "retry", "--user", "999999", "--user", "2", "-c", str(config)],
                          capture_output=True, text=True, check=False, timeout=60)
    assert none.returncode == 0, none.stderr
    assert "0 users taken out of quarantine" in none.stdout
    assert "not quarantined: 2" in none.stdout and "unknown: 999999" in none.stdout


def test_the_postgres_lock_is_fenced_to_its_own_session(pg_state_url: str,
                                                        pg_admin: Any) -> None:
    import sqlalchemy as sa

    from syncer.lock import PostgresLock

    first, second = PostgresLock(pg_state_url, "a:1"), PostgresLock(pg_state_url, "b:2")
    try:
        assert first.acquire() and first.holds()
        assert not second.acquire() and second.holder() == "a:1"
        with pg_admin.connect() as conn:   # the first one's connection dies (a failover, say)
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'syncer-lock a:1'"))
        assert not first.holds()
        assert second.acquire() and second.holds()
        assert not first.acquire()
    finally:
        first.release()
        second.release()


def test_a_stop_during_the_capture_sends_nothing(tmp_path: Path,
                                                 sandbox_app: SandboxApp) -> None:
    src = seeded(tmp_path, 10)
    config = make_config(src, f"sqlite:///{tmp_path / 'state.db'}")
    rt = Runtime(config, transport=mock_transport(sandbox_app))
    try:
        stop_now = threading.Event()
        stop_now.set()
        from syncer.pipeline import run_pass

        result = run_pass(rt, stop=stop_now)
    finally:
        rt.close()
    assert result.outcome == "stopped" and requests(result) == {}
    assert sandbox_app.snapshot()["users"] == {}


def test_a_taken_metrics_port_does_not_stop_the_daemon(tmp_path: Path,
                                                       server: SandboxServer) -> None:
    src = seeded(tmp_path, 5)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path, src, server, f"sqlite:///{tmp_path / 'state.db'}",
                              metrics_port=port)
        proc = start_daemon(config, log=tmp_path / "daemon.log")
        try:
            wait_for(lambda: len(server.app.snapshot()["users"]) == 5)
            assert proc.poll() is None
        finally:
            assert stop(proc) == 0
    assert "metrics.unavailable" in (tmp_path / "daemon.log").read_text()


def test_plan_before_the_first_pass_creates_nothing(tmp_path: Path,
                                                    sandbox_app: SandboxApp) -> None:
    src = seeded(tmp_path, 5)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    config = make_config(src, f"sqlite:///{state_dir / 'state.db'}")
    result = commands.plan(config, transport=mock_transport(sandbox_app))
    assert result.plan is not None and result.plan.ops == {"blux.update": 5}
    assert list(state_dir.iterdir()) == []
