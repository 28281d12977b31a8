"""Commit-to-destination latency in outbox mode on PostgreSQL, with a 60 s poll interval.

The daemon runs in-process against the sandbox over real HTTP (documented rate limits). Each
sample commits one change to the users table and waits until the sandbox holds it; the poll
interval is 60 s, so only the outbox watcher (a look at the outbox's newest id every
`[schedule] gather_seconds`) can make it fast. Target: under 2 s.

    python bench/latency.py [--users 10000] [--samples 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from bench.common import config, save, seed_users
from syncer.capture import outbox_ddl as ob
from syncer.daemon import Daemon
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer


def wait(condition, timeout: float = 120.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the change did not arrive")
        time.sleep(0.002)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=30)
    args = parser.parse_args()
    url = seed_users("bench_latency", args.users)
    app = SandboxApp(SandboxConfig(), Faults())
    with tempfile.TemporaryDirectory() as tmp, SandboxServer(app) as server:
        cfg = config(url, f"sqlite:///{Path(tmp) / 'state.db'}", "outbox",
                     schedule={"interval_seconds": 60},
                     blux={"base_url": server.blux_base_url},
                     nachocode={"base_url": server.nachocode_base_url})
        ob.install(cfg)
        daemon = Daemon(cfg)
        daemon.start()
        engine = sa.create_engine(url)
        latencies = []
        try:
            wait(lambda: daemon.passes >= 2 and daemon.listener is not None
                 and daemon.listener.watching.is_set(), timeout=900)
            for i in range(args.samples):
                uid = 1 + i * 7
                name = f"changed {i}"
                with engine.begin() as conn:
                    conn.execute(sa.text("UPDATE users SET display_name = :n WHERE id = :i"),
                                 {"n": name, "i": uid})
                committed = time.monotonic()
                wait(lambda uid=uid, name=name: ((app.user(str(uid)) or {})
                     .get("custom_user_properties") or {}).get("name") == name)
                latencies.append(time.monotonic() - committed)
                time.sleep(0.3)
        finally:
            daemon.stop.set()
            daemon.shutdown()
            engine.dispose()
    quantiles = statistics.quantiles(latencies, n=20)
    result = {
        "users": args.users, "samples": len(latencies), "interval_seconds": 60,
        "latency_ms": {"p50": round(statistics.median(latencies) * 1000, 1),
                       "p95": round(quantiles[18] * 1000, 1),
                       "max": round(max(latencies) * 1000, 1)},
        "target": "under 2 s",
        "met": max(latencies) < 2.0,
    }
    save("latency", result)


if __name__ == "__main__":
    main()
