"""Mapping, fingerprints and the diff, as pure functions."""

import datetime as dt
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from syncer import diff
from syncer.config import MappingConfig
from syncer.mapping import Mapping
from syncer.model import (
    BLUX,
    NACHOCODE,
    URGENT,
    Endpoint,
    KeyKind,
    Outcome,
    RawRow,
    Status,
    UserRecord,
)
from syncer.state.memory import MemoryStateStore

SALT = b"0123456789abcdef"
CONFIG = MappingConfig.model_validate({
    "user_properties": {"phone_number": "phone", "marketing_notification_consent": "mkt",
                        "marketing_notification_sms_consent": "sms"},
    "custom_user_properties": {"name": "name", "tier": "tier"},
})
BOTH = frozenset({BLUX, NACHOCODE})


def record(mapping: Mapping, key: Any, **values: Any) -> UserRecord:
    deleted = values.pop("_deleted", False)
    return mapping.record(RawRow(key, 1, deleted, values))


def test_payload_leaves_out_nulls_and_reports_bad_fields() -> None:
    m = Mapping(CONFIG, SALT)
    r = record(m, 7, phone="010-12", mkt="Y", sms=None, name="김민서", tier=None)
    assert r.user_id == "7"
    assert r.payload is not None
    assert r.payload.body("7") == {
        "user_id": "7",
        "user_properties": {"marketing_notification_consent": True},
        "custom_user_properties": {"name": "김민서"},
    }
    assert [p.field for p in r.problems] == ["phone_number"]


def test_fingerprint_depends_on_payload_only_and_on_the_salt() -> None:
    m = Mapping(CONFIG, SALT)
    a = record(m, 1, phone="010-1234-5678", mkt=1, sms="N", name="a", tier=2)
    b = record(m, 1, phone="+82 10 1234 5678", mkt="true", sms=0, name="a", tier=2)
    assert a.payload and b.payload and a.payload.fingerprint == b.payload.fingerprint
    other = Mapping(CONFIG, b"another-salt-000")
    c = record(other, 1, phone="010-1234-5678", mkt=1, sms="N", name="a", tier=2)
    assert c.payload and c.payload.fingerprint != a.payload.fingerprint


def test_changed_fields_are_named_from_tags() -> None:
    m = Mapping(CONFIG, SALT)
    old = record(m, 1, phone="010-1234-5678", mkt=1, sms=1, name="a", tier=None).payload
    new = record(m, 1, phone="010-1234-5678", mkt=0, sms=1, name="b", tier=3).payload
    assert old and new
    changed = m.changed_fields(old.field_tags, new)
    assert changed == ("custom.name", "custom.tier", "marketing_notification_consent")
    assert m.is_consent_withdrawal(changed, new)
    assert m.changed_fields(None, new) is None
    assert len(new.field_tags) == 2 + 2 * len(m.fields)


def test_state_keeps_no_personal_data() -> None:
    m = Mapping(CONFIG, SALT)
    p = record(m, 1, phone="010-1234-5678", mkt=1, sms=1, name="홍길동", tier=1).payload
    assert p is not None
    blob = p.fingerprint + p.field_tags
    assert b"01012345678" not in blob and "홍길동".encode() not in blob
    assert len(p.fingerprint) == 16


def test_operations_for_new_changed_unchanged_and_deleted_users() -> None:
    m = Mapping(CONFIG, SALT)
    store = MemoryStateStore()
    first = record(m, 1, mkt=1, name="a")
    ops = diff.operations(first, None, m, BOTH)
    assert [o.endpoint for o in ops] == [Endpoint.BLUX_UPDATE]
    assert ops[0].reason == "new"
    store.ledger.write([diff.settle(first, None, [Outcome(ops[0], Status.DELIVERED)], 1, None)],
                dt.datetime(2026, 1, 1))
    state = store.ledger.lookup(["1"])["1"]
    assert diff.operations(record(m, 1, mkt=1, name="a"), state, m, BOTH) == []
    withdrawal = diff.operations(record(m, 1, mkt=0, name="a"), state, m, BOTH)
    assert withdrawal[0].priority == URGENT
    assert withdrawal[0].changed_fields == ("marketing_notification_consent",)
    gone = UserRecord("1", 1, None, deleted=True)
    assert {o.endpoint for o in diff.operations(gone, state, m, BOTH)} == {
        Endpoint.BLUX_DELETE, Endpoint.NACHOCODE_WITHDRAW}


def test_pending_outcome_keeps_the_user_dirty_and_records_nothing() -> None:
    m = Mapping(CONFIG, SALT)
    r = record(m, 5, mkt=1)
    (op,) = diff.operations(r, None, m, BOTH)
    write = diff.settle(r, None, [Outcome(op, Status.PENDING, "500")], 5, None)
    assert write.dirty and write.deliveries == {} and write.row_hash is None


def test_quarantined_user_waits_for_a_change() -> None:
    m = Mapping(CONFIG, SALT)
    store = MemoryStateStore()
    r = record(m, 9, mkt=1, name="x")
    (op,) = diff.operations(r, None, m, BOTH)
    held = diff.settle(r, None, [Outcome(op, Status.QUARANTINED, "400: bad")], 9, None)
    store.ledger.write([held], dt.datetime(2026, 1, 1))
    state = store.ledger.lookup(["9"])["9"]
    assert diff.operations(r, state, m, BOTH) == []
    changed = record(m, 9, mkt=1, name="y")
    assert len(diff.operations(changed, state, m, BOTH)) == 1


# ---- property: apply what the diff sends to an empty destination and you get the source

rows = st.dictionaries(
    st.integers(1, 30),
    st.one_of(st.none(), st.fixed_dictionaries({
        "mkt": st.sampled_from([None, 0, 1, "Y", "N"]),
        "name": st.sampled_from([None, "a", "b", "김"]),
        "phone": st.sampled_from([None, "010-1111-2222", "bad"]),
        "_deleted": st.booleans(),
    })),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(rows, min_size=1, max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_replaying_the_operations_rebuilds_the_source(snapshots: list[dict[int, Any]],
                                                       failures: list[bool]) -> None:
    """Passes over random snapshots, some with every user's first operation failing, then one
    clean pass: the destination built from the operations equals the source; every deleted user
    that was ever alive is withdrawn, and nobody else ever is."""
    m = Mapping(CONFIG, SALT)
    store = MemoryStateStore()
    blux: dict[str, dict[str, Any]] = {}
    withdrawn: set[str] = set()
    ever_alive: set[str] = set()

    def one_pass(snapshot: dict[int, Any], fail: bool, n: int) -> dict[str, UserRecord]:
        records = {str(k): (record(m, k, **v) if v is not None
                            else UserRecord(str(k), k, None, deleted=True))
                   for k, v in snapshot.items()}
        for uid in {r.user_id for r in store.ledger.scan(KeyKind.INT)} - set(records):
            records[uid] = UserRecord(uid, int(uid), None, deleted=True)
        states = store.ledger.lookup(list(records))
        ever_alive.update(uid for uid, r in records.items() if not r.deleted)
        writes = []
        for uid, r in records.items():
            outcomes = []
            for i, op in enumerate(diff.operations(r, states.get(uid), m, BOTH)):
                if fail and i == 0:
                    outcomes.append(Outcome(op, Status.PENDING, "500"))
                    continue
                if op.endpoint is Endpoint.BLUX_UPDATE:
                    assert op.payload is not None
                    blux[uid] = op.payload.body(uid)
                elif op.endpoint is Endpoint.BLUX_DELETE:
                    blux.pop(uid, None)
                else:
                    withdrawn.add(uid)
                outcomes.append(Outcome(op, Status.DELIVERED))
            writes.append(diff.settle(r, states.get(uid), outcomes, int(uid), None))
        store.ledger.write(writes, dt.datetime(2026, 1, 1) + dt.timedelta(minutes=n))
        return records

    for n, snapshot in enumerate(snapshots):
        one_pass(snapshot, failures[n], n)
    records = one_pass(snapshots[-1], False, len(snapshots))
    alive = {uid: r for uid, r in records.items() if not r.deleted}
    assert set(blux) == set(alive)
    for uid, r in alive.items():
        assert r.payload is not None
        assert blux[uid] == r.payload.body(uid)
    assert {uid for uid, r in records.items() if r.deleted} & ever_alive <= withdrawn
    assert withdrawn <= ever_alive
