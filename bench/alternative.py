"""Against the obvious alternative: a script that reads every user and posts them all each run.

Both run against the sandbox over real HTTP at the documented rate (20 requests/s, 100 users a
request), on N users (default 20,000), for runs where 0%, 1% and 10% of the users changed since
the previous run. Reports API calls and time per run, side by side.

    python -m bench.alternative [--users 20000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from bench.common import MAPPING, config, save, seed_users
from syncer.pipeline import run_pass
from syncer.runtime import Runtime
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer


def naive_run(url: str, server: SandboxServer) -> tuple[int, float]:
    """Read every user, post them all, 100 a call, 20 calls a second. No state at all."""
    started = time.perf_counter()
    engine = sa.create_engine(url)
    props, custom = MAPPING["user_properties"], MAPPING["custom_user_properties"]
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM users WHERE deleted_at IS NULL")).mappings()
        users = [_payload(r, props, custom) for r in rows]
    engine.dispose()
    calls = 0
    endpoint = (f"{server.blux_base_url}/v2/applications/sandbox-app/users/"
                "update-properties/bulk")
    with httpx.Client(headers={"Authorization": "sandbox-blux-secret"}) as client:
        for i in range(0, len(users), 100):
            sent = time.perf_counter()
            client.post(endpoint, json={"users": users[i:i + 100]}).raise_for_status()
            calls += 1
            time.sleep(max(0.0, 1.06 / 20 - (time.perf_counter() - sent)))
    return calls, time.perf_counter() - started


def _payload(row: Any, props: dict[str, str], custom: dict[str, str]) -> dict[str, Any]:
    def scalar(value: Any) -> Any:
        if isinstance(value, Decimal):
            return float(value)
        return value if isinstance(value, str | int | float | bool) else str(value)

    up = {k: row[c] for k, c in props.items() if row[c] is not None}
    if "phone_number" in up:
        up["phone_number"] = "".join(ch for ch in up["phone_number"] if ch.isdigit())
    for key in list(up):
        if key.endswith("consent"):
            up[key] = up[key] in (True, 1, "Y", "y", "true")
    return {"user_id": str(row["id"]), "user_properties": up,
            "custom_user_properties": {k: scalar(row[c]) for k, c in custom.items()
                                       if row[c] is not None}}


def change(url: str, share: float, round_no: int, n: int) -> None:
    if share <= 0:
        return
    step = int(1 / share)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE users SET display_name = :n WHERE id % :s = :r"),
                     {"n": f"changed {round_no}", "s": step, "r": round_no % step})
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=20_000)
    args = parser.parse_args()
    url = seed_users("bench_alternative", args.users)
    app = SandboxApp(SandboxConfig(), Faults())
    rows = []
    with tempfile.TemporaryDirectory() as tmp, SandboxServer(app) as server:
        cfg = config(url, f"sqlite:///{Path(tmp) / 'state.db'}",
                     blux={"base_url": server.blux_base_url},
                     nachocode={"base_url": server.nachocode_base_url})
        rt = Runtime(cfg)
        try:
            run_pass(rt)   # both start from a destination that holds everyone
            for round_no, share in enumerate((0.0, 0.01, 0.10), start=1):
                change(url, share, round_no, args.users)
                before = app.snapshot()["requests"]["blux.update"]["total"]
                started = time.perf_counter()
                result = run_pass(rt)
                ours = time.perf_counter() - started
                our_calls = app.snapshot()["requests"]["blux.update"]["total"] - before
                naive_calls, naive_seconds = naive_run(url, server)
                rows.append({"changed": f"{share:.0%}",
                             "users_changed": result.counts.get("updated", 0),
                             "syncer_calls": our_calls, "syncer_seconds": round(ours, 2),
                             "naive_calls": naive_calls,
                             "naive_seconds": round(naive_seconds, 2)})
        finally:
            rt.close()
    save("alternative", {"users": args.users, "rate_limit": 20, "runs": rows})


if __name__ == "__main__":
    main()
