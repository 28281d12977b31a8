"""The commands, as plain functions over a loaded config. The CLI only parses arguments, calls one
of these and turns the result into output and an exit code; tests call them directly."""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from syncer import fingerprint_key
from syncer import lock as sender_lock
from syncer.capture.blind_spots import soft_delete_note
from syncer.config import Config
from syncer.databases import create_state_engine
from syncer.errors import ConfigError, StateMissing, SyncerError
from syncer.pipeline import Progress, plan_pass, run_pass
from syncer.results import BULK, BulkProgress, PassOutcome, PassResult
from syncer.runtime import Runtime
from syncer.source import Source
from syncer.state import PassRecord, ProblemRow, QuarantineRow, StateCounts, state_id
from syncer.state.memory import MemoryStateStore
from syncer.state.sql import SqlStateStore, state_exists, state_location
from syncer.state.sql import migrate as migrate_state

log = structlog.get_logger("syncer.commands")


def open_runtime(config: Config, *, new_state: bool | None = None,
                 **kwargs: object) -> Runtime:
    """Open the state (migrating it), the source (checking table and columns) and the mapping.
    Problems with both are reported together. For a command that sends (``new_state`` not
    None), a new, empty state is refused where the source shows that another state delivered
    the users, unless ``new_state`` is true."""
    for note in config.warnings():
        log.warning("config.warning", message=note)
    guard = new_state is False and config.capture.mode == "outbox"
    if guard and "state" not in kwargs and not state_exists(config.state.url):
        _refuse_if_delivered_elsewhere(config, None, None)   # before the state is created
        guard = False
    try:
        rt = Runtime(config, **kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(exc.problems + _source_problems(config)) from None
    try:
        rt.check()
        if guard and not rt.state.ledger.has_users() and not rt.state.passes.recent(1):
            _refuse_if_delivered_elsewhere(config, rt.source, state_id(rt.state.cursors))
    except BaseException:
        rt.close()
        raise
    return rt


def _refuse_if_delivered_elsewhere(config: Config, source: Source | None,
                                  ours: str | None) -> None:
    """The state is new (no users, no passes). A state records its id in the outbox's consumer
    table when it takes rows out, so another id there means another state delivered these
    users: starting over here would send every user again."""
    from syncer.capture import outbox_ddl as outbox

    probe = source
    if probe is None:
        probe = _probe_source(config)
        if probe is None:
            return   # Runtime reports the source's problems
    try:
        n = outbox.names(probe, config.capture, outbox.schema_of(probe, config.source))
        taken = bool((outbox.consumers(probe, n) or set()) - {ours})
    finally:
        if source is None:
            probe.close()
    if taken:
        raise ConfigError(
            f"the state at {state_location(config.state.url)} is new (no users, no passes), but "
            f"rows were already taken from the outbox {n.outbox_bare}: another state delivered "
            "these users. Point -c or [state] url at that state; to start over with this one "
            "instead (every user is sent again), pass --new-state")


def _probe_source(config: Config) -> Source | None:
    from syncer.mapping import Mapping

    try:
        return Source(config.source, config.capture, Mapping(config.mapping, bytes(16)).columns,
                      0, owners=config.column_owners())
    except ConfigError:
        return None


def _source_problems(config: Config) -> list[str]:
    """The source's own problems, checked without a state (to report everything at once)."""
    from syncer.mapping import Mapping

    try:
        probe = Source(config.source, config.capture, Mapping.for_config(config, bytes(16)).columns,
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


@contextmanager
def sending(config: Config, rt: Runtime) -> Iterator[None]:
    """Hold the sender lock for a command that sends: never alongside a running daemon."""
    held = sender_lock.for_config(config, rt.instance)
    if not held.acquire():
        who = held.holder() or "another instance"
        raise SyncerError(f"{who} is sending for this state (`syncer run`); two senders on one "
                          "state would both send. Stop it first, or let it do the work.")
    try:
        yield
    finally:
        held.release()


def once(config: Config, *, reconcile: bool = False, confirm: bool = False,
         progress: Progress | None = None, stop: threading.Event | None = None,
         new_state: bool = False, **runtime: object) -> PassResult:
    rt = open_runtime(config, new_state=new_state, **runtime)
    try:
        with sending(config, rt):
            return run_pass(rt, reconcile=reconcile, confirm=confirm, stop=stop,
                            progress=progress)
    finally:
        rt.close()


@dataclass(frozen=True, slots=True)
class Requeued:
    users: int
    result: PassResult | None   # the pass that sent them, when no daemon was running
    sender: str | None          # the daemon that will send them, when one was
    not_quarantined: tuple[str, ...] = ()   # retry: ids asked for that were not in quarantine
    unknown: tuple[str, ...] = ()           # retry: ids asked for that the state never saw


def _requeue(config: Config, kind: str, user_ids: Sequence[str] | None,
             progress: Progress | None, new_state: bool, stop: threading.Event | None,
             runtime: dict[str, object]) -> Requeued:
    """Apply an operator request: here and now when no daemon is sending (then a pass sends
    the users), else as a request the running sender applies at its next pass (marking users
    beside a pass in flight could be undone by that pass's own writes)."""
    rt = open_runtime(config, new_state=new_state, **runtime)
    ids = list(dict.fromkeys(user_ids)) if user_ids else None
    try:
        held = sender_lock.for_config(config, rt.instance)
        if not held.acquire():
            count = rt.state.requests.add(kind, ids)
            sender = held.holder() or "another instance"
            if kind == "retry":
                quarantined = rt.state.ledger.quarantined_ids(ids)
                return Requeued(len(quarantined), None, sender,
                                *_not_quarantined(rt, ids, quarantined))
            return Requeued(count if ids else rt.state.ledger.counts().known, None, sender)
        try:
            missing: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
            if kind == "retry":
                missing = _not_quarantined(rt, ids, rt.state.ledger.quarantined_ids(ids))
            users = apply_request(rt, kind, ids)
            return Requeued(users, run_pass(rt, progress=progress, stop=stop), None, *missing)
        finally:
            held.release()
    finally:
        rt.close()


def _not_quarantined(rt: Runtime, ids: list[str] | None,
                     quarantined: set[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Of the ids asked for, those known but not in quarantine, and those never seen."""
    if ids is None:
        return (), ()
    rest = [uid for uid in ids if uid not in quarantined]
    known = rt.state.ledger.peek(rest)
    return (tuple(uid for uid in rest if uid in known),
            tuple(uid for uid in rest if uid not in known))


def apply_request(rt: Runtime, kind: str, user_ids: list[str] | None) -> int:
    """Mark users to be sent again (only ever called by the instance holding the lock)."""
    if kind == "retry":
        return rt.state.ledger.requeue_quarantined(user_ids)
    return rt.state.ledger.forget(user_ids)


def retry(config: Config, user_ids: Sequence[str] | None = None, *,
          progress: Progress | None = None, new_state: bool = False,
          stop: threading.Event | None = None, **runtime: object) -> Requeued:
    """Send quarantined users again now (all, or these): the running daemon's next pass does,
    or a pass run here when none is running."""
    return _requeue(config, "retry", user_ids, progress, new_state, stop, runtime)


def resync(config: Config, user_ids: Sequence[str] | None = None, *, new_key: bool = False,
           progress: Progress | None = None, new_state: bool = False,
           stop: threading.Event | None = None, **runtime: object) -> Requeued:
    """Forget what was delivered (to everyone, or these users) so they are sent again, under
    the same limits and safety valve. ``new_key`` (with all users) starts a new fingerprint key,
    for a lost or leaked one."""
    if new_key and user_ids:
        raise ConfigError("--new-key goes with --all: a new key makes every fingerprint unknown")
    if new_key:
        lock = sender_lock.for_config(config, "resync --new-key")
        if not lock.acquire():
            raise SyncerError(f"{lock.holder() or 'another instance'} is sending with the "
                              "current key: stop it before replacing the key")
        store = SqlStateStore.from_url(config.state.url)
        try:
            store.ledger.forget(None)
            path = fingerprint_key.replace_key(config, store)
            log.warning("state.new_key", key_file=str(path))
        finally:
            store.close()
            lock.release()
    return _requeue(config, "resync", user_ids, progress, new_state, stop, runtime)


def missing_state(config: Config) -> str | None:
    """What to say when no state exists yet where the config points (None when one does)."""
    if state_exists(config.state.url):
        return None
    return (f"no state yet at {state_location(config.state.url)} (no pass has run with this "
            "config; if one has, check -c and [state] url)")


def plan(config: Config, *, reconcile: bool = False, progress: Progress | None = None,
         **runtime: object) -> PassResult:
    """What a pass would send. Before the very first pass (no state yet) the plan runs against
    an empty state in memory, so that it creates nothing."""
    if "state" not in runtime and not state_exists(config.state.url):
        runtime = {**runtime, "state": MemoryStateStore(), "fingerprint": os.urandom(32)}
    rt = open_runtime(config, new_state=None, **runtime)
    try:
        result = plan_pass(rt, reconcile=reconcile, progress=progress)
    finally:
        rt.close()
    result.position.update(soft_delete_note(config))
    return result


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
    sender: str | None = None                 # who holds the sender lock
    pending_by_endpoint: dict[str, int] = field(default_factory=dict)
    bulk: BulkProgress | None = None          # bulk work under way (or cut off by a crash)


def destination_health(config: Config, passes: list[PassRecord]) -> dict[str, str]:
    """Per destination, what the newest finished pass says about it."""
    names = [n for n, on in (("blux", config.blux), ("nachocode", config.nachocode)) if on]
    finished = [p for p in passes
                if p.finished_at is not None and p.outcome is not PassOutcome.RUNNING]
    health = {name: "unknown (no pass yet)" for name in names}
    if finished:
        counts = finished[0].counts
        for name in names:
            if name in counts.credentials:
                health[name] = "credentials rejected"
            elif any(ep.destination == name for ep in counts.held):
                health[name] = "held back (see the pass message)"
            elif any(ep.destination == name and n for ep, n in counts.pending.items()):
                health[name] = "failing (some sends pending)"
            else:
                health[name] = "ok"
    return health


def status(config: Config, *, limit: int = 10) -> StatusReport:
    """What the state says. Raises StateMissing, creating nothing, when there is no state."""
    missing = missing_state(config)
    if missing is not None:
        raise StateMissing(missing)
    store = SqlStateStore.from_url(config.state.url)
    try:
        passes = store.passes.recent(max(limit, 50))
        _, oldest = store.ledger.pending()
        last = next((p for p in passes if p.finished_at is not None), None)
        report = StatusReport(
            passes=passes[:limit],
            counts=store.ledger.counts(),
            quarantined=store.ledger.quarantined(limit),
            problems=store.ledger.problems(limit),
            destinations=destination_health(config, passes),
            position=_position(config),
            last_success=next((p.finished_at for p in passes if p.outcome is PassOutcome.OK),
                              None),
            oldest_pending=oldest,
            sender=sender_lock.for_config(config, "status").holder(),
            pending_by_endpoint={str(ep): n for ep, n in last.counts.pending.items()}
            if last else {},
            bulk=BulkProgress.from_json(store.cursors.get(BULK)),
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

