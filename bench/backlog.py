"""Backlog throughput: N users (default 20,000) to deliver at once, against the sandbox over real
HTTP answering every request in 200 ms, at the documented rate limits.

Reports the share of the rate limit in use while the backlog drains (requests sent per second
between the first and the last, over the documented 20/s) and the highest count the API saw in
any 1-second window. Targets: at least 90% of the limit; never above it.

    python -m bench.backlog [--users 20000] [--latency 0.2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.common import config, save, seed_users
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.2)
    args = parser.parse_args()
    url = seed_users("bench_backlog", args.users)
    sandbox = SandboxConfig()
    app = SandboxApp(sandbox, Faults(latency_seconds=args.latency))
    with tempfile.TemporaryDirectory() as tmp, SandboxServer(app) as server:
        cfg = config(url, f"sqlite:///{Path(tmp) / 'state.db'}",
                     blux={"base_url": server.blux_base_url},
                     nachocode={"base_url": server.nachocode_base_url})
        rt = Runtime(cfg)
        try:
            started = time.perf_counter()
            result = run_pass(rt)
            seconds = time.perf_counter() - started
        finally:
            rt.close()
    snap = app.snapshot()
    stats = snap["requests"]["blux.update"]
    first = snap["first_request_at"]["blux.update"]
    last = snap["last_request_at"]["blux.update"]
    requests = stats["total"]
    rate = (requests - 1) / (last - first) if last and first and last > first else 0.0
    limit = sandbox.update_rate
    busiest = snap["max_requests_in_window"]["blux.update"]
    save("backlog", {
        "users": args.users, "latency_seconds": args.latency, "outcome": result.outcome,
        "requests": requests, "users_delivered": len(snap["users"]),
        "pass_seconds": round(seconds, 2),
        "requests_per_second": round(rate, 2), "rate_limit": limit,
        "share_of_limit": round(rate / limit, 3),
        "busiest_second": busiest,
        "status_429": stats["by_status"].get("429", 0),
        "target": "at least 90% of the limit in use, never above it in any 1 s window",
        "met": rate / limit >= 0.9 and busiest <= limit,
    })


if __name__ == "__main__":
    main()
