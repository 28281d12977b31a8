"""Idle passes on a large table: watermark and outbox modes with nothing changed.

Seeds N users in PostgreSQL (default 1,000,000), delivers them once (to an in-process sandbox that
accepts any rate), then runs idle incremental passes in each mode and measures the database time
they cost: the round trip of every statement sent to the source (execute + fetch), and the plan
of the watermark query. Target: no full scan, under 50 ms of database time.

    python bench/idle_pass.py [--users 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import config, fast_sandbox, save, seed_users, statement_timer
from syncer.capture import outbox_ddl as ob
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import mock_transport


def idle(mode: str, source_url: str, workdir: Path, runs: int) -> dict[str, Any]:
    cfg = config(source_url, f"sqlite:///{workdir / f'state-{mode}.db'}", mode,
                 capture={"lookback_seconds": 0.1},
                 blux={"update_rate": 10_000, "delete_rate": 10_000, "max_in_flight": 8})
    if mode == "outbox":
        ob.install(cfg)
    app = fast_sandbox()
    rt = Runtime(cfg, transport=mock_transport(app))
    try:
        t0 = time.perf_counter()
        first = run_pass(rt)          # the first pass: a full snapshot, delivered once
        load_seconds = time.perf_counter() - t0
        assert first.outcome == "ok", first.message
        run_pass(rt)                  # settles the outbox rows the initial load left
        samples, statements, wall, source = [], [], [], []
        for _ in range(runs):
            time.sleep(0.2)
            with statement_timer(rt.source.engine) as times:
                before = rt.source_seconds
                t = time.perf_counter()
                result = run_pass(rt)
                wall.append(time.perf_counter() - t)
                source.append(rt.source_seconds - before)
            assert result.outcome == "ok" and not result.counts.requests, result.counts
            samples.append(sum(times))
            statements.append(len(times))
        return {
            "initial_load_seconds": round(load_seconds, 1),
            "initial_load_users": first.counts.get("updated", 0),
            "db_ms_median": round(statistics.median(samples) * 1000, 2),
            "db_ms_max": round(max(samples) * 1000, 2),
            "source_work_ms_median": round(statistics.median(source) * 1000, 2),
            "source_work_ms_max": round(max(source) * 1000, 2),
            "statements_per_pass": statements[0],
            "pass_wall_ms_median": round(statistics.median(wall) * 1000, 1),
            "api_calls": 0,
        }
    finally:
        rt.close()


def watermark_plan(source_url: str) -> str:
    engine = sa.create_engine(source_url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            "EXPLAIN (ANALYZE, BUFFERS) SELECT id, updated_at FROM users "
            "WHERE updated_at >= now() - interval '300 seconds'")).all()
    engine.dispose()
    return "\n".join(r[0] for r in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    url = seed_users("bench_idle", args.users)
    plan = watermark_plan(url)
    with tempfile.TemporaryDirectory() as tmp:
        results = {mode: idle(mode, url, Path(tmp), args.runs) for mode in ("watermark",
                                                                           "outbox")}
    target_ms = 50.0
    save("idle_pass", {
        "users": args.users,
        "runs": args.runs,
        "results": results,
        "watermark_query_plan": plan,
        "full_scan": "Seq Scan" in plan,
        "target": f"no full scan, under {target_ms:.0f} ms of database time",
        "met": all(r["source_work_ms_max"] < target_ms for r in results.values())
        and "Seq Scan" not in plan,
    })


if __name__ == "__main__":
    main()
