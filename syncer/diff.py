"""Compare what the source says with what each destination last acknowledged. Pure.

``operations`` decides what to send for one user; ``settle`` decides what to write to the state
once the destinations have answered. Nothing is recorded as delivered without a 2xx: an operation
that is still pending leaves the user dirty, so the next pass looks at it again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from syncer.mapping import Mapping
from syncer.model import (
    BLUX,
    DELETION_FINGERPRINT,
    NACHOCODE,
    NORMAL,
    URGENT,
    Delivered,
    Endpoint,
    Op,
    OpKind,
    Outcome,
    Quarantine,
    Status,
    UserRecord,
    UserState,
    UserWrite,
)

_KIND = {
    Endpoint.BLUX_UPDATE: OpKind.UPSERT,
    Endpoint.BLUX_DELETE: OpKind.DELETE,
    Endpoint.NACHOCODE_WITHDRAW: OpKind.WITHDRAW,
}


def operations(record: UserRecord, state: UserState | None, mapping: Mapping,
               destinations: Collection[str], *, retry_deletions: bool = False) -> list[Op]:
    """What must be sent for this user so that every destination matches the source.

    A quarantined update waits until the user's data changes. A quarantined deletion has no data
    to change: ``retry_deletions`` (reconcile passes) tries it again."""
    ops: list[Op] = []
    delivered = state.deliveries if state else {}
    quarantined = state.quarantine if state else {}
    if BLUX in destinations:
        blux = delivered.get(BLUX)
        held = quarantined.get(BLUX)
        if record.deleted:
            if not (blux and blux.deleted) and not (
                    not retry_deletions and _waits(held, DELETION_FINGERPRINT)):
                ops.append(Op(Endpoint.BLUX_DELETE, record.user_id, priority=URGENT,
                              reason="deleted in the source"))
        elif record.payload is not None:
            payload = record.payload
            unchanged = (blux is not None and not blux.deleted
                         and blux.fingerprint == payload.fingerprint)
            if not unchanged and not _waits(held, payload.fingerprint):
                if blux is None or blux.deleted:
                    changed = None
                    reason = "new" if blux is None else "back after a deletion"
                else:
                    changed = mapping.changed_fields(blux.field_tags, payload)
                    reason = "changed"
                urgent = mapping.is_consent_withdrawal(changed, payload)
                ops.append(Op(Endpoint.BLUX_UPDATE, record.user_id, payload,
                              URGENT if urgent else NORMAL, changed,
                              "consent withdrawn" if urgent else reason))
    if NACHOCODE in destinations and record.deleted:
        nacho = delivered.get(NACHOCODE)
        held = quarantined.get(NACHOCODE)
        if not (nacho and nacho.deleted) and not (
                not retry_deletions and _waits(held, DELETION_FINGERPRINT)):
            ops.append(Op(Endpoint.NACHOCODE_WITHDRAW, record.user_id, priority=URGENT,
                          reason="deleted in the source"))
    return ops


def _waits(held: Quarantine | None, fingerprint: bytes) -> bool:
    """Quarantined with exactly this content: it waits for the data to change."""
    return held is not None and held.fingerprint == fingerprint


def settle(record: UserRecord, state: UserState | None, outcomes: Sequence[Outcome],
           key_int: int | None, source_key: str | None) -> UserWrite:
    """The state row to write for this user once all its operations have an outcome."""
    deliveries: dict[str, Delivered | None] = {}
    quarantine_set: list[Quarantine] = []
    quarantine_clear: list[str] = []
    dirty = False
    for outcome in outcomes:
        op = outcome.op
        if outcome.status is Status.DELIVERED:
            if _KIND[op.endpoint] is OpKind.UPSERT:
                assert op.payload is not None
                deliveries[op.destination] = Delivered(op.payload.fingerprint,
                                                       op.payload.field_tags, False)
            else:
                deliveries[op.destination] = Delivered(None, None, True)
            if state and op.destination in state.quarantine:
                quarantine_clear.append(op.destination)
        elif outcome.status is Status.QUARANTINED:
            quarantine_set.append(Quarantine(op.destination, op.fingerprint, outcome.reason))
        else:
            dirty = True
    if state and not record.deleted:
        # Back in the source after a withdrawal: nachocode learns of the user again through the
        # app's SDK, there is nothing to send; forget the tombstone so a later deletion is sent.
        nacho = state.deliveries.get(NACHOCODE)
        if nacho is not None and nacho.deleted:
            deliveries[NACHOCODE] = None
        # A quarantine that no longer matches any operation is stale once the user is settled.
    if state and record.deleted and not dirty:
        # A deleted user's pending update quarantine is moot.
        for dest, held in state.quarantine.items():
            if held.fingerprint != DELETION_FINGERPRINT and dest not in quarantine_clear:
                quarantine_clear.append(dest)
    if record.deleted:
        # A quarantined deletion has no data that could change: the user stays "to look at",
        # so reconcile passes (which retry deletions) find it.
        still: dict[str, bytes] = {q.destination: q.fingerprint for q in quarantine_set}
        if state:
            for dest, kept in state.quarantine.items():
                if dest not in quarantine_clear and dest not in deliveries:
                    still.setdefault(dest, kept.fingerprint)
        dirty = dirty or DELETION_FINGERPRINT in still.values()
    row_hash = record.row_hash if not dirty else (state.row_hash if state else None)
    return UserWrite(
        user_id=record.user_id,
        key_int=key_int,
        source_key=source_key,
        row_hash=row_hash,
        gone=record.deleted,  # what the source says; ``dirty`` says what is still owed
        dirty=dirty,
        deliveries=deliveries,
        quarantine_set=tuple(quarantine_set),
        quarantine_clear=tuple(quarantine_clear),
        problems=() if record.deleted else record.problems,
    )
