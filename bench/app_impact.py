"""App impact on PostgreSQL: what syncer costs an application that updates its users table, measured
with pgbench (4 clients, one ``UPDATE users SET points = points + 1 WHERE id = :random_id`` per
transaction, 200,000 users) in five configurations, interleaved in one run so that the machine's
noise hits them all alike (``--rounds`` rounds of ``--seconds`` each, the order rotated per round):

- ``bare``: no triggers, no daemon (a copy of the table syncer never touches).
- ``triggers``: ``syncer outbox install`` done on that copy, no daemon.
- ``outbox``: the synced table with the triggers and ``syncer run`` (outbox mode, interval 60 s:
  the outbox watcher wakes it) as a process of its own.
- ``bare_stamped``: the copy again, the script also setting ``updated_at = now()`` (indexed).
- ``watermark``: the synced table, no triggers, the stamping script and ``syncer run`` in
  watermark mode (interval 1 s).

The sandbox runs as a process of its own, accepting any rate (``bench.sandbox_proc``); the daemon's
configured rates are the highest the config allows, and each daemon has finished its initial load
(``syncer once``) and caught up before its window starts. For the daemon configurations it also
reports the daemon's CPU time (``/proc/<pid>/stat``, from the start of pgbench until every change
landed) per distinct user changed, and the time from the end of pgbench until the sandbox holds
every change (the sum of ``points`` over the sandbox's mirror equals the table's).

Targets (issue 10): triggers alone keep at least 85% of bare TPS (aim 95%); with the daemon
running, outbox and watermark mode keep at least 70% (aim 90%) of the bare TPS of the same
script; every change lands within 30 s of the load stopping.

    python -m bench.app_impact [--users 200000] [--rounds 3] [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from bench.common import PG, admin, raw_config, sandbox_process, save, seed_users, write_config

BARE, SYNCED = "bench_app_bare", "bench_app"
SNAP = f"{BARE}.snap"  # points before a daemon round: what changed
CLIENTS = 4
PLAIN = "UPDATE {schema}.users SET points = points + 1 WHERE id = :id;"
STAMPED = "UPDATE {schema}.users SET points = points + 1, updated_at = now() WHERE id = :id;"
# The highest rates the config accepts (above the documented ones, with a warning): the API is not
# what is measured here.
FAST = {"update_rate": 10_000, "delete_rate": 10_000, "max_in_flight": 8}
CATCH_UP_TIMEOUT = 600.0
LANDING_TIMEOUT = 180.0


# ----------------------------------------------------------------------------- configs, processes


def daemon_config(folder: Path, schema: str, mode: str, interval: float,
                  blux: str, nachocode: str) -> Path:
    """A config file as an operator would write it: product defaults but for the rates."""
    url = PG.replace("postgresql+psycopg://", "postgresql://")
    rates = {"max_in_flight": FAST["max_in_flight"]}
    return write_config(folder / f"{schema}-{mode}.toml", raw_config(
        url, f"sqlite:///{folder / f'state-{schema}-{mode}.db'}", mode,
        source={"schema": schema}, capture={"reconcile_cron": ""},
        schedule={"interval_seconds": interval},
        blux={"base_url": blux, **FAST},
        nachocode={"base_url": nachocode, "rate": FAST["update_rate"], **rates}))


def syncer(*args: str, log: Path | None = None) -> None:
    """One syncer command in a process of its own; its output goes to ``log``."""
    with open(log or os.devnull, "ab") as out:
        subprocess.run([sys.executable, "-m", "syncer", *args], stdout=out,
                       stderr=subprocess.STDOUT, check=True, timeout=CATCH_UP_TIMEOUT)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def daemon(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``syncer run`` as a process; stopped with SIGTERM (killed if it does not stop in 60 s)."""
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "run", "-c", str(config)],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pgbench(script: Path, seconds: int) -> dict[str, float]:
    """One pgbench run: ``CLIENTS`` clients on two threads, no vacuum of pgbench's own tables."""
    url = sa.make_url(PG)
    out = subprocess.run(
        ["pgbench", "-n", "-c", str(CLIENTS), "-j", "2", "-T", str(seconds), "-f", str(script),
         "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432), "-U", url.username or "",
         url.database or ""],
        capture_output=True, text=True, check=True, timeout=seconds + 120)
    tps = re.search(r"tps = ([\d.]+) \(without initial connection time\)", out.stdout)
    done = re.search(r"number of transactions actually processed: (\d+)", out.stdout)
    if not tps or not done:
        raise RuntimeError(f"unexpected pgbench output: {out.stdout}\n{out.stderr}")
    return {"tps": float(tps.group(1)), "transactions": int(done.group(1))}


# ----------------------------------------------------------------------------- the sandbox's view


class Landing:
    """Whether the sandbox holds every user's current ``points`` (values only grow, so equal sums
    over equal user counts mean every change landed)."""

    def __init__(self, engine: sa.Engine, blux: str) -> None:
        self.engine = engine
        self.base = blux.rsplit("/blux", 1)[0]

    def _get(self, path: str) -> Any:
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.base}{path}", timeout=30) as answer:
            return json.loads(answer.read())

    def landed(self) -> bool:
        with self.engine.connect() as conn:
            users, total = conn.execute(sa.text(
                f"SELECT count(*), coalesce(sum(points), 0) FROM {SYNCED}.users")).one()
        mirror = self._get("/_sandbox/sum/points")
        return bool(mirror["users"] == users and abs(float(total) - mirror["sum"]) < 0.005)

    def updates(self) -> int:
        return int(self._get("/_sandbox/counts")["requests"]["blux.update"]["total"])

    def wait(self, timeout: float, quiet: float = 0.0) -> float:
        """Seconds until every change landed (and no update request came for ``quiet`` s)."""
        started = time.monotonic()
        last, since = self.updates(), time.monotonic()
        while True:
            now = time.monotonic()
            count = self.updates()
            if count != last:
                last, since = count, now
            if now - since >= quiet and self.landed():
                return now - started
            if now - started > timeout:
                raise TimeoutError(f"changes did not land within {timeout:.0f} s")
            time.sleep(0.2)


# ----------------------------------------------------------------------------- one round


@dataclass
class Bench:
    folder: Path
    engine: sa.Engine
    landing: Landing
    seconds: int
    configs: dict[str, Path]

    def script(self, schema: str, stamped: bool) -> Path:
        path = self.folder / f"{schema}-{'stamped' if stamped else 'plain'}.sql"
        body = (STAMPED if stamped else PLAIN).format(schema=schema)
        path.write_text(f"\\set id random(1, {self.users})\n{body}\n")
        return path

    @property
    def users(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT max(id) FROM {SYNCED}.users")).scalar_one())

    def settle(self, schema: str) -> None:
        """Every round starts from a vacuumed table and a fresh checkpoint."""
        with self.engine.connect() as conn:
            conn.execute(sa.text(f"VACUUM (ANALYZE) {schema}.users"))
            conn.execute(sa.text("CHECKPOINT"))

    def plain(self, schema: str, stamped: bool = False) -> dict[str, Any]:
        self.settle(schema)
        return pgbench(self.script(schema, stamped), self.seconds)

    def with_triggers(self) -> dict[str, Any]:
        syncer("outbox", "install", "-c", str(self.configs["triggers"]), log=self.log)
        try:
            return self.plain(BARE)
        finally:
            syncer("outbox", "uninstall", "-c", str(self.configs["triggers"]), log=self.log)

    @property
    def log(self) -> Path:
        return self.folder / "syncer.log"

    def with_daemon(self, mode: str) -> dict[str, Any]:
        config = self.configs[mode]
        if mode == "outbox":
            syncer("outbox", "install", "-c", str(config), log=self.log)
        try:
            with daemon(config, self.log) as proc:
                caught_up = self.landing.wait(CATCH_UP_TIMEOUT, quiet=2.0)
                self.settle(SYNCED)
                self.snapshot()
                cpu = cpu_seconds(proc.pid)
                run = pgbench(self.script(SYNCED, stamped=mode == "watermark"), self.seconds)
                landed = self.landing.wait(LANDING_TIMEOUT)
                cpu = cpu_seconds(proc.pid) - cpu
                if proc.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({proc.returncode}): see {self.log}")
        finally:
            if mode == "outbox":
                syncer("outbox", "uninstall", "-c", str(config), log=self.log)
        changed = self.changed()
        return {**run, "catch_up_seconds": round(caught_up, 1),
                "landed_seconds": round(landed, 2), "daemon_cpu_seconds": round(cpu, 2),
                "changed_users": changed,
                "cpu_microseconds_per_changed_user": round(cpu / changed * 1e6, 1)}

    def snapshot(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {SNAP}"))
            conn.execute(sa.text(
                f"CREATE UNLOGGED TABLE {SNAP} AS SELECT id, points FROM {SYNCED}.users"))

    def changed(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text(
                f"SELECT count(*) FROM {SYNCED}.users u JOIN {SNAP} s USING (id) "
                "WHERE u.points <> s.points")).scalar_one())


# ----------------------------------------------------------------------------- the run


def summary(rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return statistics.median(float(r[name][key]) for r in rounds)

    tps = {name: round(median(name, "tps"), 1) for name in rounds[0]}
    ratios = {
        "triggers": tps["triggers"] / tps["bare"],
        "outbox": tps["outbox"] / tps["bare"],
        "watermark": tps["watermark"] / tps["bare_stamped"],
        "watermark_vs_plain_bare": tps["watermark"] / tps["bare"],
    }
    # Each configuration against the bare run of its own round (noise shared within a round).
    baseline = {"triggers": "bare", "outbox": "bare", "watermark": "bare_stamped"}
    paired = {name: round(statistics.median(r[name]["tps"] / r[base]["tps"] for r in rounds), 3)
              for name, base in baseline.items()}
    daemon = {mode: {key: median(mode, key) for key in
                     ("landed_seconds", "cpu_microseconds_per_changed_user", "changed_users",
                      "daemon_cpu_seconds")} for mode in ("outbox", "watermark")}
    met = {
        "triggers_at_least_85_percent": ratios["triggers"] >= 0.85,
        "outbox_at_least_70_percent": ratios["outbox"] >= 0.70,
        "watermark_at_least_70_percent": ratios["watermark"] >= 0.70,
        "landed_within_30_s": all(r[m]["landed_seconds"] <= 30 for r in rounds
                                  for m in ("outbox", "watermark")),
    }
    return {"median_tps": tps, "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "paired_ratios_median": paired,
            "daemon_medians": daemon, "met": met, "all_met": all(met.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so every process started here is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.monotonic()
    seed_users(BARE, args.users)
    seed_users(SYNCED, args.users)
    engine = admin()
    with tempfile.TemporaryDirectory() as tmp, sandbox_process() as (blux, nachocode):
        folder = Path(tmp)
        configs = {"triggers": daemon_config(folder, BARE, "outbox", 60, blux, nachocode),
                   "outbox": daemon_config(folder, SYNCED, "outbox", 60, blux, nachocode),
                   "watermark": daemon_config(folder, SYNCED, "watermark", 1, blux, nachocode)}
        bench = Bench(folder, engine, Landing(engine, blux), args.seconds, configs)
        steps: dict[str, Callable[[], dict[str, Any]]] = {
            "bare": lambda: bench.plain(BARE),
            "triggers": bench.with_triggers,
            "outbox": lambda: bench.with_daemon("outbox"),
            "bare_stamped": lambda: bench.plain(BARE, stamped=True),
            "watermark": lambda: bench.with_daemon("watermark"),
        }
        try:
            loads = initial_loads(bench)
            rounds = run_rounds(steps, args.rounds)
        except Exception:
            if bench.log.exists():   # the syncer commands' and daemons' output, for the cause
                print(bench.log.read_text()[-5000:], file=sys.stderr)
            raise

    with engine.connect() as conn:
        for schema in (BARE, SYNCED):
            conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    engine.dispose()
    save("app_impact", {
        "users": args.users, "clients": CLIENTS, "round_seconds": args.seconds,
        "scripts": {"plain": PLAIN.format(schema="users_schema"),
                    "stamped": STAMPED.format(schema="users_schema")},
        "daemon_rates": FAST, "initial_loads": loads, "rounds": rounds, **summary(rounds),
        "targets": {"triggers": "at least 85% of bare TPS (aim 95%)",
                    "daemon": "at least 70% of bare TPS in outbox and watermark mode (aim 90%)",
                    "landing": "every change at the sandbox within 30 s of the load stopping"},
        "total_seconds": round(time.monotonic() - started),
    })


def run_rounds(steps: dict[str, Callable[[], dict[str, Any]]],
               count: int) -> list[dict[str, dict[str, Any]]]:
    """``count`` rounds of every configuration, the order rotated by one each round."""
    names = list(steps)
    rounds = []
    for r in range(count):
        results = {}
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name] = steps[name]()
            print(f"round {r + 1} {name}: {results[name]}", file=sys.stderr, flush=True)
        rounds.append({name: results[name] for name in names})
    return rounds


def initial_loads(bench: Bench) -> dict[str, float]:
    """Both daemons' states start full: ``syncer once`` in each mode (their first pass)."""
    seconds = {}
    for mode in ("outbox", "watermark"):
        config = bench.configs[mode]
        began = time.monotonic()
        if mode == "outbox":
            syncer("outbox", "install", "-c", str(config), log=bench.log)
        syncer("once", "-c", str(config), log=bench.log)
        if mode == "outbox":
            syncer("outbox", "uninstall", "-c", str(config), log=bench.log)
        seconds[mode] = round(time.monotonic() - began, 1)
    bench.landing.wait(60)
    return seconds


if __name__ == "__main__":
    main()
