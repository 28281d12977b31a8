"""One contract for the state port, run against memory, SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from syncer.errors import StateError
from syncer.model import (
    Delivered,
    Endpoint,
    FieldProblem,
    HistoryEntry,
    KeyKind,
    Operation,
    Quarantine,
    Result,
    UserWrite,
)
from syncer.results import PassCounts, PassKind, PassOutcome
from syncer.state import StateStore
from syncer.state.memory import MemoryStateStore
from syncer.state.sql import SqlStateStore

T0 = dt.datetime(2026, 11, 1, 12, 0, 0)


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "memory":
        s: StateStore = MemoryStateStore()
    elif request.param == "sqlite":
        s = SqlStateStore.from_url(f"sqlite:///{tmp_path / 'state.db'}")
    else:
        s = SqlStateStore.from_url(request.getfixturevalue("pg_state_url"))
    yield s
    s.close()


def w(uid: str, **kw: object) -> UserWrite:
    base: dict[str, object] = {"key_int": None, "source_key": None, "row_hash": 1, "gone": False,
                               "dirty": False}
    base.update(kw)
    return UserWrite(uid, **base)  # type: ignore[arg-type]


def test_meta_values(store: StateStore) -> None:
    assert store.cursors.get_meta("key_check") is None
    store.cursors.set_meta("key_check", "abc")
    store.cursors.set_meta("key_check", "def")
    assert store.cursors.get_meta("key_check") == "def"


def test_sql_meta_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = SqlStateStore.from_url(url)
    first.cursors.set_meta("key_check", "x1")
    first.close()
    again = SqlStateStore.from_url(url)  # migrating twice is harmless
    assert again.cursors.get_meta("key_check") == "x1"
    again.close()


def test_a_new_sqlite_state_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)   # the usual umask: files 0644 unless created otherwise
    try:
        store = SqlStateStore.from_url(f"sqlite:///{tmp_path / 'state.db'}")
        store.ledger.write([w("1")], T0)
        files = sorted(p.name for p in tmp_path.iterdir())
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        store.close()
    finally:
        os.umask(old_umask)
    assert {"state.db", "state.db-wal", "state.db-shm"} <= set(files)
    assert modes == {name: 0o600 for name in files}


def test_write_and_lookup_round_trip(store: StateStore) -> None:
    fp, tags = b"f" * 16, b"\x01\x02\x03\x04"
    store.ledger.write([
        w("1", key_int=1, deliveries={"blux": Delivered(fp, tags, False)},
          problems=(FieldProblem("phone_number", "not valid"),)),
        w("2", key_int=2, gone=True, row_hash=None,
          deliveries={"blux": Delivered(None, None, True),
                      "nachocode": Delivered(None, None, True)}),
        w("3", key_int=3, dirty=True, row_hash=None,
          quarantine_set=(Quarantine("blux", b"q" * 16, "400: bad"),)),
    ], T0)
    found = store.ledger.lookup(["1", "2", "3", "404"])
    assert set(found) == {"1", "2", "3"}
    assert found["1"].deliveries["blux"] == Delivered(fp, tags, False)
    assert found["1"].row_hash == 1 and not found["1"].gone
    assert found["2"].gone and found["2"].deliveries["nachocode"].deleted
    assert found["3"].dirty and found["3"].quarantine["blux"].reason == "400: bad"
    assert store.ledger.known_users() == 2
    counts = store.ledger.counts()
    assert (counts.known, counts.gone, counts.dirty) == (2, 1, 1)
    assert counts.quarantined == {"blux": 1} and counts.delivered == {"blux": 1}
    assert counts.problems == 1
    assert [p.field for p in store.ledger.problems(10)] == ["phone_number"]
    assert [r.user_id for r in store.ledger.dirty_users(10)] == ["3"]


def test_quarantine_attempts_and_clearing(store: StateStore) -> None:
    q = Quarantine("blux", b"q" * 16, "400: first")
    store.ledger.write([w("5", quarantine_set=(q,))], T0)
    store.ledger.write([w("5", quarantine_set=(Quarantine("blux", b"q" * 16, "400: again"),))],
                T0 + dt.timedelta(minutes=1))
    (row,) = store.ledger.quarantined(10)
    assert row.attempts == 2 and row.since == T0 and row.reason == "400: again"
    store.ledger.write([w("5", quarantine_clear=("blux",),
                   deliveries={"blux": Delivered(b"n" * 16, None, False)})], T0)
    assert store.ledger.quarantined(10) == []
    assert "blux" not in store.ledger.lookup(["5"])["5"].quarantine


def test_forgetting_a_delivery_and_problems(store: StateStore) -> None:
    store.ledger.write([w("7", deliveries={"nachocode": Delivered(None, None, True)},
                   problems=(FieldProblem("a", "x"), FieldProblem("b", "y")))], T0)
    store.ledger.write([w("7", deliveries={"nachocode": None},
                         problems=(FieldProblem("b", "z"),))], T0)
    state = store.ledger.lookup(["7"])["7"]
    assert "nachocode" not in state.deliveries
    assert [(p.field, p.reason) for p in store.ledger.problems(10)] == [("b", "z")]
    store.ledger.write([w("7", problems=())], T0)
    assert store.ledger.problems(10) == []


def test_scan_orders_integers_numerically_and_text_by_code_point(store: StateStore) -> None:
    ints = [10, 9, 100, -3, 2**62]
    store.ledger.write([w(str(i), key_int=i) for i in ints] + [w("zz"), w("ä")], T0)
    scanned = [r.user_id for r in store.ledger.scan(KeyKind.INT)]
    assert scanned[:5] == [str(i) for i in sorted(ints)]
    assert sorted(scanned[5:]) == ["zz", "ä"]
    texts = ["b", "B", "a", "10", "9", "é", "Z", "가"]
    store.ledger.write([w(t) for t in texts], T0)
    text_scan = [r.user_id for r in store.ledger.scan(KeyKind.TEXT) if r.user_id in texts]
    assert text_scan == sorted(texts)


def test_cursors(store: StateStore) -> None:
    assert store.cursors.get("watermark") is None
    store.cursors.set("watermark", "2026-01-01T00:00:00.123456+00:00", T0)
    assert store.cursors.get("watermark") == "2026-01-01T00:00:00.123456+00:00"
    store.cursors.set("watermark", "later", T0)
    assert store.cursors.get("watermark") == "later"
    store.cursors.set("watermark", None, T0)
    assert store.cursors.get("watermark") is None


def test_pass_history(store: StateStore) -> None:
    first = store.passes.start(PassKind.RECONCILE, "snapshot", T0, "host:1")
    counts = PassCounts(Counter(updated=3), requests=Counter({Endpoint.BLUX_UPDATE: 1}),
                        pending=Counter({Endpoint.NACHOCODE_WITHDRAW: 2}),
                        credentials={"nachocode"}, held={Endpoint.NACHOCODE_WITHDRAW})
    store.passes.finish(first, PassOutcome.OK, counts, None, T0 + dt.timedelta(seconds=2))
    second = store.passes.start(PassKind.INCREMENTAL, "outbox", T0 + dt.timedelta(minutes=1),
                                "host:1")
    passes = store.passes.recent(10)
    assert [p.id for p in passes] == [second, first]
    assert passes[0].outcome is PassOutcome.RUNNING and passes[0].kind is PassKind.INCREMENTAL
    assert passes[1].counts == counts and passes[1].counts["updated"] == 3
    assert passes[1].finished_at == T0 + dt.timedelta(seconds=2)


def test_old_passes_are_pruned_a_batch_at_a_time(store: StateStore) -> None:
    ids = [store.passes.start(PassKind.INCREMENTAL, "outbox", T0 + dt.timedelta(seconds=i),
                              "host:1") for i in range(30)]
    store.passes.finish(ids[-1], PassOutcome.OK, PassCounts(Counter(updated=1)), None,
                        T0 + dt.timedelta(minutes=1))
    assert store.passes.prune(10, 15) == 15
    assert store.passes.prune(10, 15) == 5
    assert store.passes.prune(10, 15) == 0
    kept = store.passes.recent(100)
    assert [p.id for p in kept] == ids[::-1][:10]
    assert kept[0].outcome == "ok"
    later = store.passes.start(PassKind.INCREMENTAL, "outbox", T0 + dt.timedelta(hours=1),
                               "host:1")
    store.passes.finish(later, PassOutcome.PARTIAL, PassCounts(), None,
                        T0 + dt.timedelta(hours=1))
    assert store.passes.recent(1)[0].outcome == "partial" and later not in ids


def test_operator_retry_and_resync(store: StateStore) -> None:
    store.ledger.write([
        w("1", deliveries={"blux": Delivered(b"a" * 16, None, False)}),
        w("2", quarantine_set=(Quarantine("blux", b"b" * 16, "400"),)),
        w("3", gone=True, deliveries={"blux": Delivered(None, None, True)}),
    ], T0)
    store.ledger.write([w("2", quarantine_set=(Quarantine("nachocode", b"b" * 16, "400"),))], T0)
    assert store.ledger.quarantined_ids(None) == {"2"}
    assert store.ledger.quarantined_ids(["1", "2", "404"]) == {"2"}
    assert store.ledger.requeue_quarantined(["1", "404"]) == 0   # nobody there: nothing changes
    assert not store.ledger.lookup(["1"])["1"].dirty and "404" not in store.ledger.lookup(["404"])
    assert store.ledger.requeue_quarantined(None) == 1   # users, not one per destination
    assert store.ledger.quarantined(10) == [] and store.ledger.quarantined_ids(None) == set()
    assert store.ledger.lookup(["2"])["2"].dirty
    assert store.ledger.forget(["1"]) == 1
    assert "blux" not in store.ledger.lookup(["1"])["1"].deliveries
    assert store.ledger.lookup(["1"])["1"].dirty
    # tombstones are kept: a resync never re-creates a deleted user
    assert store.ledger.forget(None) == 0
    assert store.ledger.lookup(["3"])["3"].deliveries["blux"].deleted


def test_key_ranges_and_their_sums(store: StateStore) -> None:
    keys = list(range(10, 110, 2))        # 50 users: 10, 12, ..., 108
    writes = [w(str(k), key_int=k, row_hash=k * 7919 - 2**62) for k in keys]
    writes[3] = w(str(keys[3]), key_int=keys[3], row_hash=None, dirty=True)   # pending
    writes[4] = w(str(keys[4]), key_int=keys[4], row_hash=None, gone=True)    # hard-deleted
    store.ledger.write(writes, T0)
    bounds = store.ledger.boundaries(20)
    assert bounds == [10, 50, 90]
    sums = store.ledger.block_sums(bounds)
    assert 0 not in sums            # nothing below the first key
    n, lo, hi, look = sums[1]       # [10, 50): 20 users, one pending, one gone
    assert (n, look) == (18, 1)
    expected = [k * 7919 - 2**62 for k in keys[:20] if k not in (keys[3], keys[4])]
    assert lo == sum(h & 0xFFFFFFFF for h in expected)
    assert hi == sum((h >> 32) & 0xFFFFFFFF for h in expected)
    assert sums[3][0] == 10 and sums[3][3] == 0    # [90, ...)
    assert [r.key_int for r in store.ledger.scan_range(50, 60)] == [50, 52, 54, 56, 58]
    assert [r.key_int for r in store.ledger.scan_range(None, 14)] == [10, 12]
    assert store.ledger.unkeyed_users() == 0
    store.ledger.write([w("text-key")], T0)
    assert store.ledger.unkeyed_users() == 1


def test_pass_counts_of_earlier_versions_are_read_after_the_upgrade(tmp_path: Path) -> None:
    """Migration 0004 turns the flat counts of earlier versions into totals and per-endpoint
    tables."""
    import json

    from alembic import command
    from alembic.config import Config as AlembicConfig

    from syncer.databases import create_state_engine
    from syncer.state.sql import migrations_dir

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_state_engine(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(migrations_dir()))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
        conn.exec_driver_sql(
            "INSERT INTO syncer_passes (started_at, kind, mode, outcome, counts) VALUES "
            "('2026-12-01 00:00:00', 'incremental', 'outbox', 'partial', ?)",
            (json.dumps({"updated": 4, "pending": 2, "pending:nachocode.withdraw": 2,
                         "requests:blux.update": 1, "problem:phone_number": 1,
                         "credentials:blux": 1, "held:nachocode.withdraw": 1}),))
    engine.dispose()
    store = SqlStateStore.from_url(url)
    try:
        (record,) = store.passes.recent(1)
    finally:
        store.close()
    counts = record.counts
    assert counts["updated"] == 4 and counts["pending"] == 2
    assert counts.pending == Counter({Endpoint.NACHOCODE_WITHDRAW: 2})
    assert counts.requests == Counter({Endpoint.BLUX_UPDATE: 1})
    assert counts.problems == Counter({"phone_number": 1})
    assert counts.credentials == {"blux"} and counts.held == {Endpoint.NACHOCODE_WITHDRAW}


def entry(uid: str, acked: dt.datetime, op: Operation = Operation.UPDATE,
          **kw: object) -> HistoryEntry:
    base: dict[str, object] = {
        "destination": "blux", "endpoint": "blux.update", "operation": op,
        "result": Result.DELIVERED, "fields": ("custom.name", "marketing_notification_consent"),
        "consents": (("marketing_notification_consent", False),), "pass_id": 3,
        "sent_at": acked - dt.timedelta(seconds=1), "acked_at": acked}
    base.update(kw)
    return HistoryEntry(uid, **base)  # type: ignore[arg-type]


def test_history_is_written_with_the_users_and_read_back(store: StateStore) -> None:
    first = entry("1", T0, committed_at=T0 - dt.timedelta(seconds=5))
    gone = entry("1", T0 + dt.timedelta(hours=1), Operation.WITHDRAW, destination="nachocode",
                 endpoint="nachocode.withdraw", result=Result.ALREADY_WITHDRAWN, fields=(),
                 consents=())
    store.ledger.write([w("1", history=(first,)), w("2")], T0)
    store.ledger.write([w("1", history=(gone,))], T0)
    got = store.history.timeline("1")
    assert [replace(e, id=None) for e in got] == [first, gone]
    assert got[0].id is not None and got[1].id is not None and got[0].id < got[1].id
    assert [e.destination for e in store.history.timeline("1", "nachocode")] == ["nachocode"]
    assert store.history.timeline("2") == []
    window = list(store.history.between(T0 + dt.timedelta(minutes=1), None))
    assert [e.operation for e in window] == [Operation.WITHDRAW]
    plain = entry("3", T0, consents=())
    store.ledger.write([w("3", history=(plain,))], T0)
    assert [e.user_id for e in store.history.between(None, None, plain_updates=False)] == \
        ["1", "1"]


def test_history_is_pruned_oldest_first_in_batches(store: StateStore) -> None:
    store.ledger.write([w(str(i), history=(entry(str(i), T0 + dt.timedelta(days=i)),))
                        for i in range(5)], T0)
    assert store.history.prune(T0 + dt.timedelta(days=3), 2) == 2
    assert store.history.prune(T0 + dt.timedelta(days=3), 2) == 1
    assert store.history.prune(T0 + dt.timedelta(days=3), 2) == 0
    assert [e.user_id for e in store.history.between(None, None)] == ["3", "4"]


def test_a_failed_write_leaves_no_history(tmp_path: Path) -> None:
    store = SqlStateStore.from_url(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with pytest.raises(StateError):   # a key the database cannot hold fails the write
            store.ledger.write([w("1", history=(entry("1", T0),)), w("2", key_int=2**70)], T0)
        assert store.history.timeline("1") == []
    finally:
        store.close()
