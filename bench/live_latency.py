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

from bench.common import MAPPING, save, seed_users
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer

FAST = SandboxConfig(update_rate=1_000_000, delete_rate=1_000_000, withdraw_rate=1_000_000)


def config_text(url: str, state: str, server: SandboxServer, *, unlimited: bool) -> str:
    rates = ("update_rate = 100000\ndelete_rate = 100000\n" if unlimited else "")
    nacho_rate = "rate = 100000\n" if unlimited else ""
    props = "\n".join(f'{k} = "{v}"' for k, v in MAPPING["user_properties"].items())
    custom = "\n".join(f'{k} = "{v}"' for k, v in MAPPING["custom_user_properties"].items())
    return f"""
[source]
url = "{url}"
table = "users"
primary_key = "id"
[capture]
mode = "outbox"
soft_delete_column = "deleted_at"
[schedule]
interval_seconds = 60
[state]
url = "{state}"
[mapping.user_properties]
{props}
[mapping.custom_user_properties]
{custom}
[blux]
base_url = "{server.blux_base_url}"
application_id = "{SandboxConfig().blux_application_id}"
secret_key = "{SandboxConfig().blux_secret_key}"
{rates}[nachocode]
base_url = "{server.nachocode_base_url}"
api_key = "{SandboxConfig().nachocode_api_key}"
secret_key = "{SandboxConfig().nachocode_secret_key}"
{nacho_rate}"""


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
        for i in range(count):
            uid = first_id + i * 3
            if not wait(lambda uid=uid: delivered(uid), timeout=120):
                raise TimeoutError(f"user {uid} was never delivered")
            app.watch(str(uid))
            kind = "withdrawal" if i % 2 == 0 else "deletion"
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
        cfg = tmp / "initial.toml"
        cfg.write_text(config_text(url, f"sqlite:///{tmp / 'initial.db'}", server,
                                   unlimited=False))
        assert syncer("outbox", "install", "-c", str(cfg)).returncode == 0
        proc = daemon(cfg, tmp / "initial.log")
        try:
            samples = probes(app, url, count, 11, lambda uid: app.user(str(uid)) is not None)
        finally:
            stop(proc)
    return summary(samples)


def resync_all(users: int, count: int, tmp: Path) -> dict[str, Any]:
    url = seed_users("bench_live_resync", users)
    app = SandboxApp(FAST, Faults())
    state = f"sqlite:///{tmp / 'resync.db'}"
    with SandboxServer(app) as server:
        fast = tmp / "fast.toml"
        fast.write_text(config_text(url, state, server, unlimited=True))
        assert syncer("outbox", "install", "-c", str(fast)).returncode == 0
        loaded = syncer("once", "-c", str(fast))
        assert loaded.returncode == 0, loaded.stderr[-2000:]
        app.config = SandboxConfig()    # the documented rates from now on
        app.reset()
        cfg = tmp / "resync.toml"
        cfg.write_text(config_text(url, state, server, unlimited=False))
        assert syncer("resync", "--all", "-c", str(cfg)).returncode == 0
        proc = daemon(cfg, tmp / "resync.log")
        try:
            samples = probes(app, url, count, 12, lambda uid: app.user(str(uid)) is not None)
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
                  "initial_load": initial_load(args.users, args.probes, Path(tmp)),
                  "resync_all": resync_all(args.users, args.probes, Path(tmp))}
    save("live_latency", result)


if __name__ == "__main__":
    main()
