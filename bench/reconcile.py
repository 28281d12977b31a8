"""Reconcile at scale: a full diff of N unchanged users, against the floor.

Seeds N users in PostgreSQL (default 1,000,000), delivers them once (to an in-process sandbox that
accepts any rate), then, each in a fresh process so memory is measured alone:

* floor: a bare psycopg scan of the same columns (server-side cursor) that hashes each row in
  Python and does nothing else;
* syncer: ``syncer once --reconcile``'s pass (run_pass(reconcile=True)) with nothing changed.

Target: syncer within 1.5x of the floor (the aim is to beat it), peak RSS under
150 MB and flat as the table grows, zero API calls.

    python -m bench.reconcile [--users 1000000] [--users 2000000] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import COLUMNS, config, fast_sandbox, peak_rss_mb, save, seed_users


def floor_worker(url: str) -> dict[str, Any]:
    import psycopg
    import sqlalchemy as sa

    conninfo = sa.engine.make_url(url).set(drivername="postgresql") \
        .render_as_string(hide_password=False)
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(conninfo) as conn, conn.cursor(name="floor") as cur:
        cur.itersize = 10_000
        cur.execute(f"SELECT id, {', '.join(COLUMNS)} FROM users")
        for row in cur:
            hashlib.blake2b(repr(row).encode(), digest_size=8).digest()
            rows += 1
    return {"seconds": time.perf_counter() - started, "rows": rows, "peak_rss_mb": peak_rss_mb()}


def syncer_worker(url: str, state: str) -> dict[str, Any]:
    from syncer.pipeline import run_pass
    from syncer.runtime import Runtime
    from syncer.sandbox import mock_transport

    app = fast_sandbox()
    rt = Runtime(config(url, state), transport=mock_transport(app))
    try:
        rt.check()
        started = time.perf_counter()
        result = run_pass(rt, reconcile=True)
        seconds = time.perf_counter() - started
    finally:
        rt.close()
    calls = sum(v["total"] for v in app.snapshot()["requests"].values())
    return {"seconds": seconds, "rows": result.counts.get("scanned", 0), "outcome": result.outcome,
            "api_calls": calls, "candidates": result.counts.get("candidates", 0),
            "peak_rss_mb": peak_rss_mb()}


def in_process(kind: str, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "bench.reconcile", "--worker", kind, *args],
                         capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def load(url: str, state: str) -> float:
    from syncer.pipeline import run_pass
    from syncer.runtime import Runtime
    from syncer.sandbox import mock_transport

    rt = Runtime(config(url, state, blux={"update_rate": 10_000, "max_in_flight": 8}),
                 transport=mock_transport(fast_sandbox()))
    try:
        started = time.perf_counter()
        result = run_pass(rt)
        assert result.outcome == "ok", result.message
        return time.perf_counter() - started
    finally:
        rt.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, action="append")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--worker", choices=["floor", "syncer"])
    parser.add_argument("args", nargs="*")
    args = parser.parse_args()
    if args.worker == "floor":
        print(json.dumps(floor_worker(*args.args)))
        return
    if args.worker == "syncer":
        print(json.dumps(syncer_worker(*args.args)))
        return
    sizes = args.users or [1_000_000]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            url = seed_users(f"bench_reconcile_{n}", n)
            state = f"sqlite:///{Path(tmp) / f'state-{n}.db'}"
            load_seconds = load(url, state)
            floors = [in_process("floor", url) for _ in range(args.runs)]
            ours = [in_process("syncer", url, state) for _ in range(args.runs)]
            floor_s = statistics.median(r["seconds"] for r in floors)
            our_s = statistics.median(r["seconds"] for r in ours)
            results.append({
                "users": n,
                "initial_load_seconds": round(load_seconds, 1),
                "floor_seconds": round(floor_s, 2),
                "syncer_seconds": round(our_s, 2),
                "ratio": round(our_s / floor_s, 2),
                "floor_peak_rss_mb": round(max(r["peak_rss_mb"] for r in floors), 1),
                "syncer_peak_rss_mb": round(max(r["peak_rss_mb"] for r in ours), 1),
                "api_calls": max(r["api_calls"] for r in ours),
                "candidates": max(r["candidates"] for r in ours),
                "runs": args.runs,
            })
    met = all(r["ratio"] <= 1.5 and r["syncer_peak_rss_mb"] < 150 and r["api_calls"] == 0
              for r in results)
    save("reconcile", {"results": results,
                       "target": "within 1.5x of the floor, peak RSS < 150 MB, zero API calls",
                       "met": met})


if __name__ == "__main__":
    main()
