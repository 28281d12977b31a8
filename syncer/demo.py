"""``syncer demo``: the whole product on embedded defaults, with no services, keys or network.

A SQLite app database with sample users (Korean names, phone numbers in mixed formats, random
consents), the sandbox on a free loopback port, a first pass, then a day in the life of the app
(updates, consent withdrawals, touches of unmapped columns, soft and hard deletes, sign-ups), a
second pass that sends exactly those, and a third that sends nothing.
"""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from syncer import commands
from syncer.config import Config
from syncer.configfile import parse
from syncer.report import pass_summary
from syncer.sandbox import SandboxApp, SandboxConfig, SandboxServer

_FAMILY = "김이박최정강조윤장임한오서신권황안송류홍"
_GIVEN = "민서지현수영준호우진예은하윤도연시우성재희주아린태"
_DOMAINS = ("example.com", "example.co.kr", "mail.example.net")


def _name(rng: random.Random) -> str:
    return rng.choice(_FAMILY) + rng.choice(_GIVEN) + rng.choice(_GIVEN)


def _phone(rng: random.Random) -> str:
    mid, last = rng.randint(1000, 9999), rng.randint(1000, 9999)
    return rng.choice([
        f"010-{mid}-{last}", f"010{mid}{last}", f"+82 10-{mid}-{last}", f"010 {mid} {last}",
        f"+821{0}{mid}{last}",
    ])


def _consent(rng: random.Random, yes: bool) -> Any:
    return rng.choice([(1 if yes else 0), ("Y" if yes else "N"), ("true" if yes else "false")])


def create_app_db(path: Path, users: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    now = dt.datetime(2026, 11, 27, 9, 0, 0)
    with sqlite3.connect(path) as db:
        db.execute("""
            CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                display_name TEXT NOT NULL,
                phone TEXT,
                email TEXT,
                marketing_ok INTEGER,
                sms_ok TEXT,
                push_ok TEXT,
                night_ok INTEGER,
                birthday TEXT,
                points NUMERIC,
                last_login_at TEXT,
                deleted_at TEXT,
                updated_at TEXT NOT NULL
            )""")
        rows = []
        for i in range(1, users + 1):
            marketing = rng.random() < 0.6
            phone = _phone(rng) if rng.random() < 0.97 else rng.choice(["010-12", "call me"])
            rows.append((
                i, _name(rng), phone if rng.random() < 0.95 else None,
                f"user{i}@{rng.choice(_DOMAINS)}" if rng.random() < 0.9 else None,
                int(marketing), _consent(rng, marketing and rng.random() < 0.8),
                _consent(rng, marketing and rng.random() < 0.9), int(rng.random() < 0.2),
                f"{rng.randint(1960, 2008)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                rng.randint(0, 50_000), now.isoformat(" "), None, now.isoformat(" "),
            ))
        db.executemany("INSERT INTO users VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)


def a_day_in_the_life(path: Path, seed: int = 11) -> dict[str, int]:
    """Change the app database the way a day of use would; returns what was done."""
    rng = random.Random(seed)
    later = dt.datetime(2026, 11, 28, 9, 0, 0).isoformat(" ")
    with sqlite3.connect(path) as db:
        alive = [r[0] for r in db.execute("SELECT id FROM users WHERE deleted_at IS NULL")]
        rng.shuffle(alive)
        # per 3000 users: 40 edits, 25 consent withdrawals, 200 unmapped touches, 15 soft and
        # 10 hard deletes (under the 5% safety valve), 30 sign-ups
        sizes = [max(1, round(len(alive) * n / 3000)) for n in (40, 25, 200, 15, 10, 30)]
        cuts = [sum(sizes[:i]) for i in range(6)]
        edited, withdrawn, touched, soft, hard = (
            alive[cuts[i]:cuts[i] + sizes[i]] for i in range(5))
        signups = sizes[5]
        for uid in edited:
            db.execute("UPDATE users SET display_name=?, points=points+100, updated_at=? "
                       "WHERE id=?", (_name(rng), later, uid))
        for uid in withdrawn:
            db.execute("UPDATE users SET marketing_ok=0, sms_ok='N', push_ok='N', updated_at=? "
                       "WHERE id=?", (later, uid))
        for uid in touched:  # an unmapped column: not a change
            db.execute("UPDATE users SET last_login_at=? WHERE id=?", (later, uid))
        for uid in soft:
            db.execute("UPDATE users SET deleted_at=?, updated_at=? WHERE id=?",
                       (later, later, uid))
        db.executemany("DELETE FROM users WHERE id=?", [(uid,) for uid in hard])
        top = db.execute("SELECT max(id) FROM users").fetchone()[0]
        for i in range(top + 1, top + 1 + signups):
            db.execute("INSERT INTO users (id, display_name, phone, email, marketing_ok, sms_ok, "
                       "push_ok, night_ok, birthday, points, last_login_at, deleted_at, "
                       "updated_at) VALUES (?,?,?,?,1,'Y','Y',0,'2000-01-01',0,?,NULL,?)",
                       (i, _name(rng), _phone(rng), f"user{i}@example.com", later, later))
    return {"edited": len(edited), "consent withdrawn": len(withdrawn),
            "unmapped column touched": len(touched), "soft-deleted": len(soft),
            "hard-deleted": len(hard), "signed up": signups}


def demo_config(workdir: Path, server: SandboxServer, sandbox: SandboxConfig) -> Config:
    raw = {
        "source": {"url": f"sqlite:///{workdir / 'app.db'}", "table": "users",
                   "primary_key": "id"},
        "capture": {"mode": "snapshot", "soft_delete_column": "deleted_at",
                    "max_delete_fraction": 0.05},
        "state": {"url": f"sqlite:///{workdir / 'state.db'}"},
        "mapping": {
            "user_properties": {
                "phone_number": "phone", "email_address": "email",
                "marketing_notification_consent": "marketing_ok",
                "marketing_notification_sms_consent": "sms_ok",
                "marketing_notification_push_consent": "push_ok",
                "nighttime_notification_consent": "night_ok",
            },
            "custom_user_properties": {"name": "display_name", "birthday": "birthday",
                                       "points": "points"},
        },
        "blux": {"base_url": server.blux_base_url,
                 "application_id": sandbox.blux_application_id,
                 "secret_key": sandbox.blux_secret_key},
        "nachocode": {"base_url": server.nachocode_base_url,
                      "api_key": sandbox.nachocode_api_key,
                      "secret_key": sandbox.nachocode_secret_key},
    }
    return parse(raw, path="<demo>")


def _mirror_table(console: Console, snapshot: dict[str, Any]) -> None:
    table = Table("at the sandbox", "count", title="what the two platforms now hold")
    requests: dict[str, Any] = snapshot["requests"]
    table.add_row("Blux users", str(len(snapshot["users"])))
    table.add_row("Blux users deleted", str(len(snapshot["deleted_user_ids"])))
    table.add_row("nachocode users withdrawn", str(len(snapshot["withdrawn_user_ids"])))
    for endpoint, counts in requests.items():
        table.add_row(f"requests to {endpoint}", str(counts["total"]))
    busiest = snapshot["max_requests_in_window"]
    table.add_row("busiest second (update/delete/withdraw)",
                  " / ".join(str(busiest[e]) for e in busiest))
    console.print(table)


def _source_matches(workdir: Path, snapshot: dict[str, Any]) -> bool:
    with sqlite3.connect(workdir / "app.db") as db:
        alive = {str(r[0]) for r in db.execute("SELECT id FROM users WHERE deleted_at IS NULL")}
    return set(snapshot["users"]) == alive


def run_demo(users: int = 3000, keep: str | None = None, console: Console | None = None) -> int:
    console = console or Console()
    holder = None
    if keep:
        workdir = Path(keep)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in ("app.db", "state.db", "state.db-wal", "state.db-shm"):
            (workdir / name).unlink(missing_ok=True)
    else:
        holder = tempfile.TemporaryDirectory(prefix="syncer-demo-")
        workdir = Path(holder.name)
    sandbox = SandboxConfig()
    app = SandboxApp(sandbox)
    try:
        with SandboxServer(app) as server:
            console.rule("[bold]syncer demo")
            create_app_db(workdir / "app.db", users)
            console.print(f"app database: {users} users in SQLite ({workdir / 'app.db'}); "
                          f"Blux and nachocode stand-ins at {server.url}")
            config = demo_config(workdir, server, sandbox)

            console.rule("pass 1: first sync, everyone is new")
            first = commands.once(config)
            pass_summary(console, first)

            console.rule("a day in the life of the app")
            for what, n in a_day_in_the_life(workdir / "app.db").items():
                console.print(f"  {n:4d} users {what}")
            console.rule("plan: what pass 2 would send (dry run)")
            from syncer.report import plan_report

            plan_report(console, commands.plan(config))
            console.rule("pass 2: only what changed")
            second = commands.once(config)
            pass_summary(console, second)
            console.print("  [dim]unmapped touches cost nothing; consent withdrawals and "
                          "deletions went first; a phone number that cannot be normalised is "
                          "left out and reported (see `syncer status`)[/]")

            console.rule("pass 3: nothing changed")
            third = commands.once(config)
            pass_summary(console, third)

            snapshot = app.snapshot()
            _mirror_table(console, snapshot)
            same = _source_matches(workdir, snapshot)
            console.print("[green]Blux holds exactly the app's live users.[/]" if same
                           else "[red]Blux differs from the app database![/]")
            if keep:
                console.print(f"files kept in {workdir}: app.db (the app), state.db (syncer's "
                              "state). Try: syncer status -c <a config pointing at them>")
            calls3 = third.counts.requests_total
            ok = (same and calls3 == 0 and second.counts.get("updated", 0) > 0
                  and first.outcome.completed and second.outcome.completed)
            return 0 if ok else 1
    finally:
        if holder is not None:
            holder.cleanup()
