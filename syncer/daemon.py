"""The daemon (``syncer run``): what lets a team leave syncer alone for months.

* **Passes**: APScheduler 3 runs a pass every ``interval_seconds`` and a reconcile on
  ``reconcile_cron``; in outbox mode a new outbox row starts one at once. Passes never
  overlap, and a pass longer than ``max_pass_seconds`` leaves the rest to the next.
* **One sender**: the instance holding the sender lock sends; another stands by, says so, and
  takes over within seconds when the first stops or dies.
* **Outages**: the source or state database or an API being down never stops the daemon: it
  waits, retries, reports it (logs, ``/healthz``, metrics, systemd status) and catches up.
* **systemd**: ``READY=1`` once config, state and source are good; ``STATUS=`` after each pass;
  ``WATCHDOG=1`` only while work really progresses (a stuck pass stops the pings, and systemd
  restarts it); ``STOPPING=1``. SIGTERM/SIGINT: no new work, requests in flight finish or time
  out, what was delivered is recorded, exit 0.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from types import FrameType
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncer import lock as sender_lock
from syncer.capture.outbox import OutboxCapture, OutboxWatcher
from syncer.commands import open_runtime
from syncer.config import Config, parse_listen
from syncer.databases import STATEMENT_TIMEOUT_SECONDS
from syncer.errors import ConfigError, SyncerError
from syncer.metrics import Metrics, serve
from syncer.pipeline import run_pass
from syncer.results import PassOutcome, PassResult
from syncer.runtime import Runtime
from syncer.sdnotify import Notifier

log = structlog.get_logger("syncer.daemon")

STANDBY_POLL_SECONDS = 2.0
FAILING_AFTER_SECONDS = 600.0  # an endpoint pending this long makes /healthz say 503


class Daemon:
    def __init__(self, config: Config, runtime: Runtime | None = None, *,
                 notifier: Notifier | None = None, metrics: Metrics | None = None,
                 lock: sender_lock.SenderLock | None = None, new_state: bool = False) -> None:
        self.config = config
        self.new_state = new_state   # may start a new state where the outbox shows an old one
        self.rt = runtime
        self.stop = threading.Event()        # the process is stopping
        self._term = threading.Event()       # the current leadership is ending
        self._pass_lock = threading.Lock()
        self._wake = threading.Event()
        self.notifier = notifier or Notifier()
        self.metrics = metrics or Metrics()
        self.lock = lock
        self.scheduler: BackgroundScheduler | None = None
        self.listener: OutboxWatcher | None = None
        self.last_result: PassResult | None = None
        self.passes = 0
        self.role = "starting"
        self.holder: str | None = None
        self.problem: str | None = None      # why the daemon cannot work right now
        self.in_pass = False
        self.started = time.monotonic()
        self.leading_since: float | None = None
        self.last_completed: float | None = None
        self.failing: dict[str, tuple[float, str]] = {}  # endpoint -> (since, why)
        # how long one database call may run before the pass counts as stuck
        self.query_allowance = STATEMENT_TIMEOUT_SECONDS + 60.0
        if runtime is not None:
            runtime.observer = self.metrics

    # ------------------------------------------------------------------ passes

    def run_one(self, reconcile: bool = False) -> PassResult | None:
        """One pass (never two at once); again right away while wake-ups arrived during it or
        the capture left work behind."""
        if self._term.is_set() or self.rt is None:
            return None
        result = None
        with self._pass_lock:
            while not self._term.is_set():
                self._wake.clear()
                result = self._pass(reconcile)
                reconcile = False
                if result is None or not (self._wake.is_set() or result.more):
                    break
        return result

    def _pass(self, reconcile: bool) -> PassResult | None:
        assert self.rt is not None
        self.in_pass = True
        self.rt.beat()
        try:
            result = run_pass(self.rt, reconcile=reconcile, stop=self._term,
                              time_limit=self.config.schedule.max_pass_seconds)
        except SyncerError as exc:
            log.error("pass.error", error=str(exc))
            self.problem = str(exc)
            self.notifier.status(f"last pass failed: {str(exc)[:120]}")
            return None
        except Exception:
            log.exception("pass.crashed")
            self.problem = "the last pass crashed (see the log)"
            return None
        finally:
            self.in_pass = False
            self.rt.beat()
        self._after(result)
        return result

    def _after(self, result: PassResult) -> None:
        assert self.rt is not None
        self.last_result = result
        self.passes += 1
        now = time.monotonic()
        if result.outcome is PassOutcome.FAILED:
            self.problem = result.message or "the last pass failed"
        else:
            self.problem = None
        if result.outcome.completed:
            self.last_completed = now
        pending = {endpoint for endpoint, n in result.counts.pending.items() if n}
        for endpoint in list(self.failing):
            if endpoint not in pending:
                del self.failing[endpoint]
        reason = result.message or "sends pending"
        for endpoint in pending:
            self.failing.setdefault(endpoint, (now, reason))
        self.metrics.record_pass(result, self.rt.destinations)
        try:
            count, oldest = self.rt.state.ledger.pending()
            self.metrics.record_pending(count, oldest)
        except SyncerError:
            pass
        self.notifier.status(self._describe(result))

    @staticmethod
    def _describe(result: PassResult) -> str:
        sent = ", ".join(f"{k} {result.counts[k]}" for k in ("updated", "deleted", "withdrawn",
                                                            "quarantined", "pending")
                         if result.counts.get(k))
        return (f"leader: {result.kind} pass {result.outcome} at "
                f"{dt.datetime.now(dt.UTC):%H:%M:%S}Z" + (f" ({sent})" if sent else ""))

    def wake(self) -> None:
        """Start a pass as soon as possible (the outbox moved); a burst of them within a few
        milliseconds, or during a pass, makes one more pass."""
        self._wake.set()
        scheduler = self.scheduler
        job = scheduler.get_job("pass") if scheduler is not None else None
        if job is not None:
            job.modify(next_run_time=_now() + dt.timedelta(milliseconds=20))

    # ------------------------------------------------------------------ leadership

    def lead(self) -> None:
        """Start sending: the interval and reconcile jobs, and the outbox watcher."""
        if self.rt is None:
            self.rt = open_runtime(self.config, new_state=self.new_state)
            self.rt.observer = self.metrics
        self._term.clear()
        self.role = "leader"
        self.leading_since = time.monotonic()
        self.metrics.leader.set(1)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        interval = self.config.schedule.interval_seconds
        self.scheduler.add_job(self.run_one, IntervalTrigger(seconds=interval), id="pass",
                               max_instances=1, coalesce=True, next_run_time=_now(),
                               misfire_grace_time=None)
        cron = self.config.capture.reconcile_cron
        if cron and self.config.capture.mode != "snapshot":
            self.scheduler.add_job(self.run_one, CronTrigger.from_crontab(cron, timezone="UTC"),
                                   kwargs={"reconcile": True}, id="reconcile", max_instances=1,
                                   coalesce=True, misfire_grace_time=3600)
        self.scheduler.start()
        capture = self.config.capture
        outbox = self.rt.capture(reconcile=False)
        if isinstance(outbox, OutboxCapture) and capture.listen_notify:
            self.listener = outbox.watcher(self.rt.ctx, self.wake, self._term,
                                           self.config.schedule.gather_seconds)
            self.listener.start()
        log.info("daemon.leading", mode=capture.mode, interval_seconds=interval,
                 reconcile_cron=cron)

    start = lead  # a daemon without a lock (tests, one instance) simply leads

    def follow(self) -> None:
        """Stop sending (stopping, or the lock was lost): no new pass, the current one ends."""
        self._term.set()
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=True)
        with self._pass_lock:   # a pass finishing its requests in flight
            pass
        if self.listener is not None:
            self.listener.join(timeout=5)
            self.listener = None
        self.metrics.leader.set(0)
        self.leading_since = None

    def shutdown(self) -> None:
        self.stop.set()
        self.follow()
        if self.lock is not None:
            self.lock.release()
        if self.rt is not None:
            self.rt.close()
            self.rt = None
        log.info("daemon.stopped", passes=self.passes)

    # ------------------------------------------------------------------ health

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = time.monotonic()
        details: dict[str, Any] = {"role": self.role, "passes": self.passes}
        if self.holder and self.role == "standby":
            details["sender"] = self.holder
        reasons: list[str] = []
        if self.problem:
            reasons.append(self.problem)
        result = self.last_result
        if self.role == "leader" and result is not None:
            details["last_pass"] = {"outcome": result.outcome, "kind": result.kind}
            if self.last_completed is not None:
                details["last_pass"]["completed_seconds_ago"] = round(now - self.last_completed)
            reasons += [f"{dest} refuses the credentials: {why}"
                        for dest, why in result.credentials.items()]
        if self.role == "leader":
            stale = max(3 * self.config.schedule.interval_seconds,
                        self.config.schedule.max_pass_seconds, 300.0)
            since = self.last_completed or self.leading_since or self.started
            if now - since > stale and not self.in_pass:
                reasons.append(f"no pass has completed for {now - since:.0f}s")
            for endpoint, (first, why) in self.failing.items():
                if now - first > FAILING_AFTER_SECONDS:
                    reasons.append(f"{endpoint} has had sends pending for {now - first:.0f}s: "
                                   f"{why}")
        details["status"] = "failing" if reasons else (
            "ok" if self.role == "leader" else self.role)
        if reasons:
            details["reasons"] = reasons
        return not reasons, details

    def progressing(self) -> bool:
        """Whether work is really moving: outside a pass, or a pass that made progress lately
        (a stuck pass must stop the watchdog pings). A database call may take as long as the
        statement timeout allows before it counts as stuck: a reconcile of a big table is one
        long query, and the database itself ends a query that runs longer."""
        rt = self.rt
        if not self.in_pass or rt is None:
            return True
        now = time.monotonic()
        beat = rt.heartbeat
        if now - beat.last < (self.notifier.watchdog_seconds or 120.0) / 2:
            return True
        return bool(beat.busy) and now - beat.busy_since < self.query_allowance

    # ------------------------------------------------------------------ the process

    def _watchdog(self) -> None:
        period = (self.notifier.watchdog_seconds or 0) / 4
        while period and not self.stop.wait(period):
            if self.progressing():
                self.notifier.watchdog()

    def _open(self) -> bool:
        """Open config, state and source, waiting (with backoff) while a database is down."""
        backoff = 1.0
        while not self.stop.is_set():
            try:
                self.rt = open_runtime(self.config, new_state=self.new_state)
                self.rt.observer = self.metrics
                self.problem = None
                return True
            except ConfigError:
                raise
            except SyncerError as exc:
                self.problem = f"waiting for the databases: {exc}"
                log.warning("daemon.waiting", error=str(exc), retry_in=backoff)
                self.notifier.status(self.problem[:200])
                # still starting, on purpose: systemd's start timeout must not kill the wait
                self.notifier.send(f"EXTEND_TIMEOUT_USEC={int((backoff + 30) * 1_000_000)}")
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 30.0)
        return False

    def serve_forever(self) -> int:
        server = None
        if self.config.metrics is not None:
            host, port = parse_listen(self.config.metrics.listen)
            try:
                server, _ = serve(self.metrics, self.health, host, port)
                log.info("metrics.listening", listen=self.config.metrics.listen)
            except OSError as exc:   # e.g. a second instance on the same host: still useful
                log.error("metrics.unavailable", listen=self.config.metrics.listen,
                          error=exc.strerror or str(exc))
        watchdog = threading.Thread(target=self._watchdog, name="syncer-watchdog", daemon=True)
        watchdog.start()
        try:
            if not self._open():
                return 0
            assert self.rt is not None
            if self.lock is None:
                self.lock = sender_lock.for_config(self.config, self.rt.instance)
            self.notifier.ready("started; waiting for the sender lock")
            self._lead_or_stand_by()
        finally:
            self.notifier.stopping()
            self.shutdown()
            if server is not None:
                server.shutdown()
        return 0

    def _lead_or_stand_by(self) -> None:
        assert self.lock is not None
        announced = False
        while not self.stop.is_set():
            if self.role != "leader":
                if self.lock.acquire():
                    log.info("lock.acquired", instance=self.rt.instance if self.rt else None)
                    self.lead()
                    self.notifier.status("leader: sending")
                    announced = False
                else:
                    self.holder = self.lock.holder()
                    self.role = "standby"
                    self.problem = (f"cannot reach the state for the sender lock: "
                                    f"{self.lock.error}" if self.lock.error else None)
                    if not announced:
                        log.info("daemon.standby", sender=self.holder)
                        self.notifier.status(f"standby: {self.holder or 'another instance'} "
                                             "is sending")
                        announced = True
            elif not self.lock.holds():
                log.error("lock.lost", hint="another instance may take over; this one stands by")
                self.follow()
                self.role = "standby"
            self.stop.wait(STANDBY_POLL_SECONDS)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_daemon(config: Config, *, new_state: bool = False) -> int:
    daemon = Daemon(config, new_state=new_state)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("daemon.stopping", signal=signal.Signals(signum).name)
        daemon.stop.set()
        daemon._term.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    code = daemon.serve_forever()
    log.info("daemon.exit", seconds=round(time.monotonic() - started, 1))
    return code
