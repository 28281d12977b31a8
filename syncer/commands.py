"""The commands, as plain functions over a loaded config. The CLI only parses arguments, calls one
of these and turns the result into output and an exit code; tests call them directly."""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass, field

import structlog

from syncer.config import Config
from syncer.errors import ConfigError, SyncerError
from syncer.pipeline import PassResult, Progress, Runtime, plan_pass, run_pass, utcnow
from syncer.state import PassRecord, ProblemRow, QuarantineRow, StateCounts
from syncer.state.sql import SqlStateStore, create_state_engine
from syncer.state.sql import migrate as migrate_state

log = structlog.get_logger("syncer.commands")


def open_runtime(config: Config, **kwargs: object) -> Runtime:
    """Open the state (migrating it), the source (checking table and columns) and the mapping.
    Problems with both are reported together."""
    for note in config.warnings():
        log.warning("config.warning", message=note)
    try:
        rt = Runtime(config, **kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(exc.problems + _source_problems(config)) from None
    try:
        rt.check()
    except BaseException:
        rt.close()
        raise
    return rt


def _source_problems(config: Config) -> list[str]:
    """The source's own problems, checked without a state (to report everything at once)."""
    from syncer.mapping import Mapping
    from syncer.source import Source

    try:
        probe = Source(config.source, config.capture, Mapping(config.mapping, bytes(16)).columns,
                       0, owners=config.column_owners())
    except ConfigError as exc:
        return exc.problems
    try:
        probe.check()
    except ConfigError as exc:
        return exc.problems
    except SyncerError:
        return []
    finally:
        probe.close()
    return []


def once(config: Config, *, reconcile: bool = False, confirm: bool = False,
         progress: Progress | None = None, stop: threading.Event | None = None,
         **runtime: object) -> PassResult:
    rt = open_runtime(config, **runtime)
    try:
        return run_pass(rt, reconcile=reconcile, confirm=confirm, stop=stop, progress=progress)
    finally:
        rt.close()


def plan(config: Config, *, reconcile: bool = False, progress: Progress | None = None,
         **runtime: object) -> PassResult:
    rt = open_runtime(config, **runtime)
    try:
        return plan_pass(rt, reconcile=reconcile, progress=progress)
    finally:
        rt.close()


def migrate(config: Config) -> str:
    """Create or upgrade the state schema; returns the state URL (password hidden)."""
    engine = create_state_engine(config.state.url)
    try:
        migrate_state(engine)
    finally:
        engine.dispose()
    return config.state.redacted_url


@dataclass(frozen=True, slots=True)
class StatusReport:
    passes: list[PassRecord]
    counts: StateCounts
    quarantined: list[QuarantineRow]
    problems: list[ProblemRow]
    destinations: dict[str, str]
    position: dict[str, object] = field(default_factory=dict)
    last_success: dt.datetime | None = None
    oldest_pending: dt.datetime | None = None


def destination_health(config: Config, passes: list[PassRecord]) -> dict[str, str]:
    """Per destination, what the newest finished pass says about it."""
    names = [n for n, on in (("blux", config.blux), ("nachocode", config.nachocode)) if on]
    finished = [p for p in passes if p.finished_at is not None and p.outcome != "running"]
    health = {name: "unknown (no pass yet)" for name in names}
    if finished:
        last = finished[0]
        for name in names:
            if last.counts.get(f"credentials:{name}"):
                health[name] = "credentials rejected"
            elif any(k.startswith(f"held:{name}") for k in last.counts):
                health[name] = "held back (see the pass message)"
            elif any(k.startswith(f"pending:{name}") for k in last.counts):
                health[name] = "failing (some sends pending)"
            else:
                health[name] = "ok"
    return health


def status(config: Config, *, limit: int = 10) -> StatusReport:
    store = SqlStateStore.from_url(config.state.url)
    try:
        passes = store.recent_passes(max(limit, 50))
        report = StatusReport(
            passes=passes[:limit],
            counts=store.counts(),
            quarantined=store.quarantined(limit),
            problems=store.problems(limit),
            destinations=destination_health(config, passes),
            position=_position(config),
            last_success=next((p.finished_at for p in passes if p.outcome == "ok"), None),
        )
    finally:
        store.close()
    return report


def _position(config: Config) -> dict[str, object]:
    """The capture position, if the source can be reached; never fails the status command."""
    if config.capture.mode == "snapshot":
        return {}
    try:
        rt = Runtime(config)
    except Exception as exc:
        return {"error": f"cannot open: {type(exc).__name__}"}
    try:
        return rt.capture(reconcile=False).position(rt.ctx)
    except Exception as exc:
        return {"error": str(exc)[:200]}
    finally:
        rt.close()


def now() -> dt.datetime:
    return utcnow()
