"""How long a consent withdrawal or a deletion takes to land while bulk work is being sent.

PostgreSQL, outbox mode, a 60 s poll interval, the documented rate limits, ``syncer run`` as a
process of its own and the sandbox (real HTTP) in this one. Two scenarios:

- **initial load**: the daemon starts on ``--users`` users never delivered (at 2,000 users/s,
  1,000,000 take over 8 minutes); once the load is under way, a probe every few seconds commits a
  consent withdrawal (``marketing_ok = false``) or a hard delete of a user already delivered and
  waits until Blux (and, for a deletion, nachocode) have it.
- **resync --all**: every user delivered first (quickly, against a sandbox and a config without
  practical limits), then ``syncer resync --all`` and the daemon at the documented rates: the
  same probes while every user is sent again.

Each probe's latency is from the commit to the arrival of the last request that carries it, as
the sandbox stamps it (same clock). Target: under 2 s (aim 1 s). The loads are not run to the
end: the probes are what is measured.

    python -m bench.live_latency [--users 1000000] [--probes 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import raw_config, save, seed_users, write_config
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer

FAST = SandboxConfig(update_rate=1_000_000, delete_rate=1_000_000, withdraw_rate=1_000_000)


def write_daemon_config(path: Path, url: str, state: str, server: SandboxServer, *,
                        unlimited: bool) -> Path:
    """Outbox mode, a 60 s interval; the documented rates, or the highest the config takes."""
    fast = {"update_rate": 10_000, "delete_rate": 10_000} if unlimited else {}
    return write_config(path, raw_config(
        url, state, "outbox", schedule={"interval_seconds": 60},
        blux={"base_url": server.blux_base_url, **fast},
        nachocode={"base_url": server.nachocode_base_url,
                   **({"rate": 10_000} if unlimited else {})}))


def syncer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, check=False)


def daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "syncer", "run", "-c", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env=dict(os.environ))


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def probes(app: SandboxApp, url: str, count: int, first_id: int, delivered: Any
           ) -> list[dict[str, Any]]:
    """Alternately withdraw a consent and hard-delete a delivered user; how long each took."""
    engine = sa.create_engine(url)
    out: list[dict[str, Any]] = []
    try:
        uid = first_id
        for i in range(count):
            kind = "withdrawal" if i % 2 == 0 else "deletion"
            with engine.connect() as conn:   # a user who has a consent to withdraw
                uid = int(conn.execute(sa.text(
                    "SELECT min(id) FROM users WHERE id > :i"
                    + (" AND marketing_ok" if kind == "withdrawal" else "")), {"i": uid}
                ).scalar_one())
            if not wait(lambda uid=uid: delivered(uid), timeout=300):
                raise TimeoutError(f"user {uid} was never delivered")
            app.watch(str(uid))
            with engine.begin() as conn:
                if kind == "withdrawal":
                    conn.execute(sa.text("UPDATE users SET marketing_ok = false WHERE id = :i"),
                                 {"i": uid})
                else:
                    conn.execute(sa.text("DELETE FROM users WHERE id = :i"), {"i": uid})
            committed = time.monotonic()
            wanted = ({"blux.update"} if kind == "withdrawal"
                      else {"blux.delete", "nachocode.withdraw"})

            def arrived(uid: int = uid, wanted: set[str] = wanted,
                        since: float = committed) -> bool:
                return wanted <= {ep for ep, at in app.landed(str(uid)) if at >= since}

            if not wait(arrived, timeout=120):
                raise TimeoutError(f"the {kind} of user {uid} did not land")
            landed = max(at for ep, at in app.landed(str(uid)) if ep in wanted)
            out.append({"kind": kind, "seconds": round(landed - committed, 3),
                        "users_loaded_then": len(app.ever_updated())})
            time.sleep(3.0)
    finally:
        engine.dispose()
    return out


def summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    seconds = [s["seconds"] for s in samples]
    return {"samples": samples, "p50_s": round(statistics.median(seconds), 3),
            "max_s": round(max(seconds), 3), "met": max(seconds) < 2.0}


def initial_load(users: int, count: int, tmp: Path) -> dict[str, Any]:
    url = seed_users("bench_live_initial", users)
    app = SandboxApp(SandboxConfig(), Faults())
    with SandboxServer(app) as server:
        cfg = write_daemon_config(tmp / "initial.toml", url, f"sqlite:///{tmp / 'initial.db'}",
                                  server, unlimited=False)
        installed = syncer("outbox", "install", "-c", str(cfg))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        proc = daemon(cfg, tmp / "initial.log")
        try:
            samples = probes(app, url, count, 11, lambda uid: app.user(str(uid)) is not None)
        finally:
            stop(proc)
    return summary(samples)


def resync_all(users: int, count: int, tmp: Path, first_id: int = 1000) -> dict[str, Any]:
    url = seed_users("bench_live_resync", users)
    app = SandboxApp(FAST, Faults())
    state = f"sqlite:///{tmp / 'resync.db'}"
    with SandboxServer(app) as server:
        fast = write_daemon_config(tmp / "fast.toml", url, state, server, unlimited=True)
        installed = syncer("outbox", "install", "-c", str(fast))
        assert installed.returncode == 0, installed.stdout + installed.stderr
        loaded = syncer("once", "-c", str(fast))
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        app.config = SandboxConfig()    # the documented rates from now on
        app.reset()
        cfg = write_daemon_config(tmp / "resync.toml", url, state, server, unlimited=False)
        proc = daemon(cfg, tmp / "resync.log")
        try:
            time.sleep(3.0)   # the daemon is up and idle (nothing changed)
            # Asked while the daemon sends: it applies the request at its next pass, which a
            # change wakes at once (otherwise the 60 s interval would).
            asked = syncer("resync", "--all", "-c", str(cfg))
            assert asked.returncode == 0, asked.stdout + asked.stderr
            engine = sa.create_engine(url)
            with engine.begin() as conn:
                conn.execute(sa.text("UPDATE users SET points = points + 1 WHERE id = 1"))
            engine.dispose()
            samples = probes(app, url, count, first_id, lambda uid: app.user(str(uid)) is not None)
        finally:
            stop(proc)
    return summary(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"users": args.users, "interval_seconds": 60, "mode": "outbox",
                  "rates": "documented (blux.update 20/s x 100 users, blux.delete 100/s, "
                           "nachocode.withdraw 10/s)",
                  "target": "under 2 s (aim 1 s)",
                  "initial_load": initial_load(args.users, args.probes, Path(tmp))}
        print(result, flush=True)   # the first scenario's numbers, whatever the second does
        result["resync_all"] = resync_all(args.users, args.probes, Path(tmp))
    save("live_latency", result)


if __name__ == "__main__":
    main()
