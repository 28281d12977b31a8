"""The daemon: APScheduler interval passes, a scheduled reconcile, wake-ups, and a graceful stop.

Passes never overlap: one lock serialises the interval pass, the reconcile and wake-ups. SIGTERM
and SIGINT stop new work, let requests in flight finish (or time out), record what was delivered
and exit 0.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time
from types import FrameType

import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from syncer.capture.outbox import NotifyListener, channel_name
from syncer.commands import open_runtime
from syncer.config import Config
from syncer.errors import SyncerError
from syncer.pipeline import PassResult, Runtime, run_pass

log = structlog.get_logger("syncer.daemon")


class Daemon:
    def __init__(self, config: Config, runtime: Runtime | None = None) -> None:
        self.config = config
        self.rt = runtime
        self.stop = threading.Event()
        self._pass_lock = threading.Lock()
        self._wake = threading.Event()
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self.last_result: PassResult | None = None
        self.passes = 0
        self.listener: NotifyListener | None = None

    # -- passes

    def run_one(self, reconcile: bool = False) -> PassResult | None:
        """One pass (never two at once); again right away while wake-ups arrived during it or
        the capture left work behind."""
        if self.stop.is_set() or self.rt is None:
            return None
        result = None
        with self._pass_lock:
            while not self.stop.is_set():
                self._wake.clear()
                result = self._pass(reconcile)
                reconcile = False
                if result is None or not (self._wake.is_set() or result.more):
                    break
        return result

    def _pass(self, reconcile: bool) -> PassResult | None:
        assert self.rt is not None
        try:
            result = run_pass(self.rt, reconcile=reconcile, stop=self.stop,
                              time_limit=self.config.schedule.max_pass_seconds)
        except SyncerError as exc:
            log.error("pass.error", error=str(exc))
            return None
        except Exception:
            log.exception("pass.crashed")
            return None
        self.last_result = result
        self.passes += 1
        return result

    def wake(self) -> None:
        """Start a pass as soon as possible (a NOTIFY arrived); a burst of them within a few
        milliseconds, or during a pass, makes one more pass."""
        self._wake.set()
        job = self.scheduler.get_job("pass")
        if job is not None:
            job.modify(next_run_time=_now() + dt.timedelta(milliseconds=20))

    # -- lifecycle

    def start(self) -> None:
        if self.rt is None:
            self.rt = open_runtime(self.config)
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
        if (capture.mode == "outbox" and capture.listen_notify
                and self.rt.source.dialect == "postgresql"):
            self.listener = NotifyListener(self.config.source.url,
                                           channel_name(capture.outbox_table), self.wake,
                                           self.stop)
            self.listener.start()
        log.info("daemon.started", mode=self.config.capture.mode, interval_seconds=interval,
                 reconcile_cron=cron)

    def shutdown(self) -> None:
        self.stop.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        # wait for a pass that is finishing its in-flight requests
        with self._pass_lock:
            pass
        if self.listener is not None:
            self.listener.join(timeout=5)
        if self.rt is not None:
            self.rt.close()
        log.info("daemon.stopped", passes=self.passes)

    def serve_forever(self) -> int:
        self.start()
        while not self.stop.wait(1.0):
            pass
        self.shutdown()
        return 0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def run_daemon(config: Config) -> int:
    daemon = Daemon(config)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("daemon.stopping", signal=signal.Signals(signum).name)
        daemon.stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    code = daemon.serve_forever()
    log.info("daemon.exit", seconds=round(time.monotonic() - started, 1))
    return code
