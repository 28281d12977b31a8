"""Backlog throughput: N users (default 20,000) to deliver at once, against the sandbox over real
HTTP answering every request in 200 ms, at the documented rate limits.

Reports the share of the rate limit in use while the backlog drains (requests sent per second
between the first and the last, over the documented 20/s) and the highest count the API saw in
any 1-second window (arrivals stamped with the kernel's receive time). Runs twice: on a quiet
machine, then beside ``--busy`` processes spinning on the CPU (default: one per core). Targets:
at least 95% of the limit; never above it, also when the CPUs are busy.

    python -m bench.backlog [--users 20000] [--latency 0.2] [--busy N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import config, save, seed_users
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer


def drain(url: str, latency: float) -> dict[str, Any]:
    """One pass delivering every user of ``url``; what the sandbox saw."""
    sandbox = SandboxConfig()
    app = SandboxApp(sandbox, Faults(latency_seconds=latency))
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
    return {"outcome": result.outcome, "requests": requests,
            "users_delivered": len(snap["users"]), "pass_seconds": round(seconds, 2),
            "requests_per_second": round(rate, 2), "rate_limit": limit,
            "share_of_limit": round(rate / limit, 3), "busiest_second": busiest,
            "status_429": stats["by_status"].get("429", 0),
            "met": rate / limit >= 0.95 and busiest <= limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--busy", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args()
    url = seed_users("bench_backlog", args.users)
    quiet = drain(url, args.latency)
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(args.busy)]
    try:
        busy = drain(url, args.latency)
    finally:
        for proc in spinners:
            proc.kill()
            proc.wait()
    save("backlog", {
        "users": args.users, "latency_seconds": args.latency, "quiet": quiet,
        "busy": {"spinning_processes": args.busy, **busy},
        "target": "at least 95% of the limit in use, never above it in any 1 s window, "
                  "also with the CPUs busy",
        "met": quiet["met"] and busy["met"],
    })


if __name__ == "__main__":
    main()
