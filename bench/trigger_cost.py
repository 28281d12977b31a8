"""Trigger cost on MariaDB/MySQL and SQLite: the application's single-row update throughput with
the outbox triggers (``syncer outbox install``) against without them, no daemon. The PostgreSQL
counterpart, with pgbench, is ``bench.app_impact``.

Each transaction is ``UPDATE users SET points = points + 1 WHERE id = <random>`` and a commit, on a
200,000-user table; MariaDB takes 4 processes with a connection each (PyMySQL), SQLite one
connection (WAL journal, as an application with concurrent readers would use). Bare and triggers
alternate, ``--rounds`` rounds of ``--seconds`` each, the order swapped every other round; the
medians' ratio is reported. No target (issue 10 asks for the number to be reported).

    python -m bench.trigger_cost [--users 200000] [--rounds 3] [--seconds 10]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pymysql
import sqlalchemy as sa

from bench.common import raw_config, save, write_config

MYSQL = os.environ.get("SYNCER_BENCH_MYSQL", "mysql+pymysql://root@127.0.0.1:3306/test")
DATABASE = "bench_trig"
PROCESSES = 4
UPDATE = "UPDATE users SET points = points + 1 WHERE id = {}"
TABLE = """CREATE TABLE users (
    id BIGINT PRIMARY KEY, display_name VARCHAR(100) NOT NULL, phone VARCHAR(40),
    email VARCHAR(200), marketing_ok BOOLEAN, sms_ok CHAR(1), push_ok SMALLINT, night_ok BOOLEAN,
    points DECIMAL(12, 2), birthday DATE, last_login_at {ts}, deleted_at {ts},
    updated_at {ts} NOT NULL)"""


def rows(n: int) -> list[tuple[Any, ...]]:
    """``n`` users like ``bench.common.seed_users``'s."""
    now = dt.datetime(2026, 1, 1, 12, 0, 0)
    return [(g, f"사용자 {g}", f"010-{g % 10000:04d}-{g // 7 % 10000:04d}", f"user{g}@example.com",
             g % 3 != 0, "Y" if g % 2 == 0 else "N", g % 2, g % 5 == 0, (g % 100000) / 100,
             dt.date(1970, 1, 1) + dt.timedelta(days=g % 15000), now, None, now)
            for g in range(1, n + 1)]


def outbox_config(folder: Path, url: str) -> Path:
    """Enough of a config for `syncer outbox install` on ``url``."""
    return write_config(folder / f"{url.split(':', maxsplit=1)[0]}.toml",
                        raw_config(url, f"sqlite:///{folder / 'state.db'}", "outbox"))


def outbox(action: str, config: Path) -> None:
    subprocess.run([sys.executable, "-m", "syncer", "outbox", action, "-c", str(config)],
                   check=True, capture_output=True, timeout=120)


def alternate(measure: Callable[[], float], config: Path, rounds: int) -> dict[str, Any]:
    """Bare and with triggers, alternating; the triggers are removed again at the end."""
    runs: dict[str, list[float]] = {"bare": [], "triggers": []}
    for r in range(rounds):
        for name in (("bare", "triggers") if r % 2 == 0 else ("triggers", "bare")):
            if name == "triggers":
                outbox("install", config)
            try:
                runs[name].append(round(measure(), 1))
            finally:
                if name == "triggers":
                    outbox("uninstall", config)
    bare, triggers = statistics.median(runs["bare"]), statistics.median(runs["triggers"])
    return {"tps": runs, "median_tps": {"bare": bare, "triggers": triggers},
            "ratio": round(triggers / bare, 3)}


# ----------------------------------------------------------------------------- MariaDB/MySQL


def mysql_worker(args: tuple[dict[str, Any], int, float, float]) -> int:
    """Single-row update transactions from ``start`` to ``end`` (wall clock); how many."""
    params, users, start, end = args
    conn = pymysql.connect(**params)
    pick = random.Random(os.getpid()).randint
    done = 0
    try:
        with conn.cursor() as cursor:
            time.sleep(max(0.0, start - time.time()))
            while time.time() < end:
                cursor.execute(UPDATE.format(pick(1, users)))
                conn.commit()
                done += 1
    finally:
        conn.close()
    return done


def mysql(users: int, rounds: int, seconds: float, folder: Path) -> dict[str, Any]:
    admin = sa.create_engine(MYSQL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        conn.execute(sa.text(f"CREATE DATABASE {DATABASE} CHARACTER SET utf8mb4"))
        version = conn.execute(sa.text("SELECT VERSION()")).scalar_one()
    url = sa.make_url(MYSQL).set(database=DATABASE)
    params: dict[str, Any] = {"host": url.host, "port": url.port or 3306,
                              "user": url.username, "password": url.password or "",
                              "database": DATABASE}
    loader = pymysql.connect(**params)
    with loader.cursor() as cursor:
        cursor.execute(TABLE.format(ts="DATETIME(6)"))
        cursor.executemany("INSERT INTO users VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                           " %s, %s)", rows(users))
    loader.commit()
    loader.close()
    config = outbox_config(folder, url.render_as_string(hide_password=False))

    def measure() -> float:
        with ProcessPoolExecutor(PROCESSES) as pool:
            start = time.time() + 1.0
            counts = pool.map(mysql_worker, [(params, users, start, start + seconds)] * PROCESSES)
            return sum(counts) / seconds

    try:
        result = alternate(measure, config, rounds)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f"DROP DATABASE IF EXISTS {DATABASE}"))
        admin.dispose()
    return {"server": version, "connections": PROCESSES, **result}


# ----------------------------------------------------------------------------- SQLite


def sqlite(users: int, rounds: int, seconds: float, folder: Path) -> dict[str, Any]:
    path = folder / "app.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(TABLE.format(ts="TEXT"))
    conn.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                     [tuple(str(v) if isinstance(v, dt.date) else v for v in row)
                      for row in rows(users)])
    conn.commit()
    config = outbox_config(folder, f"sqlite:///{path}")
    pick = random.Random(1).randint

    def measure() -> float:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        done, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            conn.execute(UPDATE.format(pick(1, users)))
            conn.commit()
            done += 1
        return done / seconds

    try:
        result = alternate(measure, config, rounds)
    finally:
        conn.close()
    return {"version": sqlite3.sqlite_version, "connections": 1, "journal_mode": "wal", **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result = {"users": args.users, "round_seconds": args.seconds,
                  "transaction": UPDATE.format(":random_id") + "; COMMIT",
                  "mariadb": mysql(args.users, args.rounds, args.seconds, folder),
                  "sqlite": sqlite(args.users, args.rounds, args.seconds, folder),
                  "target": "none: reported (issue 10)"}
    save("trigger_cost", result)


if __name__ == "__main__":
    main()
