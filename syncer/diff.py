"""Compare what the source says with what each destination last acknowledged. Pure.

``operations`` decides what to send for one user; ``settle`` decides what to write to the state
once the destinations have answered. Nothing is recorded as delivered without a 2xx: an operation
that is still pending leaves the user dirty, so the next pass looks at it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Final

from syncer.mapping import Mapping
from syncer.model import (
    BLUX,
    DELETION_FINGERPRINT,
    NACHOCODE,
    NORMAL,
    URGENT,
    Delivered,
    Endpoint,
    HistoryEntry,
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
               destinations: Collection[str], *, retry_deletions: bool = False,
               send_unseen: bool = False, now: dt.datetime | None = None) -> list[Op]:
    """What must be sent for this user so that every destination matches the source.

    A deletion (a Blux delete, a nachocode withdrawal) is irreversible, so it is sent only for a
    user the source once gave alive (``seen_alive``): a key that shows up deleted or absent
    without that (a row deleted before syncer saw it, a join that lost its row for a moment) is
    not a deletion of anyone syncer knows; :func:`unseen_deletion` tells the caller to report it.
    ``send_unseen`` (the very first pass with ``initial_deletions = "send"``) sends those too.

    A user re-created with the same key (:func:`replacing`) is first deleted and withdrawn, so
    that the new person does not inherit the previous one's fields; until every destination has
    done so the state keeps ``recreating``, and the new person is sent whole afterwards.

    A quarantined update waits until the user's data changes. A quarantined deletion has no data
    to change: ``retry_deletions`` (reconcile passes) tries it again. A transient quarantine
    (5xx or timeouts for that user alone) may pass by itself: it is tried again once
    :data:`TRANSIENT_RETRY` has passed since its last attempt (``now``)."""
    delivered = state.deliveries if state else {}
    quarantined = state.quarantine if state else {}
    if record.deleted or replacing(record, state):
        if not (state and state.seen_alive) and not send_unseen:
            return []
        why = "deleted in the source" if record.deleted else (
            "re-created with the same key: the previous person is deleted first")
        return _deletions(record.user_id, delivered, quarantined, destinations,
                          retry_deletions, why, now)
    if BLUX not in destinations or record.payload is None:
        return []
    blux = delivered.get(BLUX)
    held = quarantined.get(BLUX)
    payload = record.payload
    if blux is not None and not blux.deleted and blux.fingerprint == payload.fingerprint:
        return []
    if _waits(held, payload.fingerprint, retry_deletions, now):
        return []
    if blux is None or blux.deleted:
        changed = None
        reason = "new" if blux is None else "back after a deletion"
    else:
        changed = mapping.changed_fields(blux.field_tags, payload)
        reason = "changed"
    urgent = mapping.is_consent_withdrawal(changed, payload)
    return [Op(Endpoint.BLUX_UPDATE, record.user_id, payload, URGENT if urgent else NORMAL,
               changed, "consent withdrawn" if urgent else reason)]


def replacing(record: UserRecord, state: UserState | None) -> bool:
    """The row is another person than the one syncer saw alive under this key (re-created now,
    or an earlier re-creation whose deletions are not all done yet)."""
    return (not record.deleted and state is not None and state.seen_alive
            and (record.recreated or state.recreating))


def _deletions(user_id: str, delivered: dict[str, Delivered],
               quarantined: dict[str, Quarantine], destinations: Collection[str],
               retry: bool, why: str, now: dt.datetime | None) -> list[Op]:
    ops: list[Op] = []
    for dest, endpoint in ((BLUX, Endpoint.BLUX_DELETE), (NACHOCODE, Endpoint.NACHOCODE_WITHDRAW)):
        done = delivered.get(dest)
        if dest not in destinations or (done is not None and done.deleted):
            continue
        if _waits(quarantined.get(dest), DELETION_FINGERPRINT, retry, now):
            continue
        ops.append(Op(endpoint, user_id, priority=URGENT, reason=why))
    return ops


def identity_changed(record: UserRecord, state: UserState | None) -> bool:
    """``[capture] created_column`` holds another value than when the user was last seen:
    another person now holds this key."""
    return (state is not None and state.identity is not None and record.identity is not None
            and state.identity != record.identity)


def unseen_deletion(record: UserRecord, state: UserState | None) -> bool:
    """A deletion of a user the source never gave alive: nothing is sent, it is reported."""
    return record.deleted and not (state and state.seen_alive)


def through_the_valve(state: UserState | None) -> bool:
    """Whether this user's deletion already went through the safety valve in an earlier pass
    (it was recorded as deleted and is still owed somewhere, or was carried out somewhere):
    finishing it is not a new deletion. Anything else that would be sent counts."""
    if state is None or not state.gone:
        return False
    return state.dirty or any(d.deleted for d in state.deliveries.values())


# How long a user quarantined for 5xx/timeouts of its own waits before it is tried again.
TRANSIENT_RETRY: Final = dt.timedelta(hours=1)


def _waits(held: Quarantine | None, fingerprint: bytes, retry: bool = False,
           now: dt.datetime | None = None) -> bool:
    """Quarantined with exactly this content: it waits for the data to change (a deletion: for
    a reconcile pass when ``retry``; a transient quarantine: for :data:`TRANSIENT_RETRY`)."""
    if held is None or held.fingerprint != fingerprint:
        return False
    if held.transient:
        return not (now is not None and held.last_attempt is not None
                    and now - held.last_attempt >= TRANSIENT_RETRY)
    return not (retry and fingerprint == DELETION_FINGERPRINT)


def settle(record: UserRecord, state: UserState | None, outcomes: Sequence[Outcome],
           key_int: int | None, source_key: str | None,
           history: tuple[HistoryEntry, ...] = ()) -> UserWrite:
    """The state row to write for this user once all its operations have an outcome (with its
    audit-trail entries)."""
    got = _Settled.of(outcomes, state)
    quarantine_clear = got.quarantine_clear + _stale_quarantines(record, state, got)
    held = [*got.quarantine_set, *_still_held(state, got, quarantine_clear)]
    # A quarantined deletion has no data that could change, and a transient quarantine may pass
    # by itself: the user stays "to look at" (reconcile passes retry deletions).
    dirty = got.dirty or any(q.transient or (record.deleted and q.fingerprint ==
                                             DELETION_FINGERPRINT) for q in held)
    recreating = replacing(record, state) and (got.dirty or bool(got.quarantine_set))
    if replacing(record, state):
        dirty = True   # the new person goes once the previous one is deleted everywhere
    deliveries = dict(got.deliveries)
    if state and not record.deleted and not replacing(record, state):
        # Back in the source after a withdrawal: nachocode learns of the user again through the
        # app's SDK, there is nothing to send; forget the tombstone so a later deletion is sent.
        nacho = state.deliveries.get(NACHOCODE)
        if nacho is not None and nacho.deleted:
            deliveries[NACHOCODE] = None
    seen = bool(state and state.seen_alive)
    return UserWrite(
        user_id=record.user_id,
        key_int=key_int,
        source_key=source_key,
        row_hash=record.row_hash if not dirty else (state.row_hash if state else None),
        gone=record.deleted,  # what the source says; ``dirty`` says what is still owed
        dirty=dirty,
        deliveries=deliveries,
        quarantine_set=tuple(got.quarantine_set),
        quarantine_clear=tuple(quarantine_clear),
        problems=() if record.deleted else record.problems,
        seen_alive=seen or not record.deleted,
        identity=(state.identity if state else None) if record.deleted else record.identity,
        recreating=recreating,
        history=history,
    )


@dataclass(slots=True)
class _Settled:
    """What the destinations' answers say, per destination."""

    deliveries: dict[str, Delivered | None]
    quarantine_set: list[Quarantine]
    quarantine_clear: list[str]
    dirty: bool   # something is still pending

    @classmethod
    def of(cls, outcomes: Sequence[Outcome], state: UserState | None) -> _Settled:
        got = cls({}, [], [], False)
        for outcome in outcomes:
            op = outcome.op
            if outcome.status is Status.DELIVERED:
                if _KIND[op.endpoint] is OpKind.UPSERT:
                    assert op.payload is not None
                    got.deliveries[op.destination] = Delivered(op.payload.fingerprint,
                                                               op.payload.field_tags, False)
                else:
                    got.deliveries[op.destination] = Delivered(None, None, True)
                if state and op.destination in state.quarantine:
                    got.quarantine_clear.append(op.destination)
            elif outcome.status is Status.QUARANTINED:
                got.quarantine_set.append(Quarantine(op.destination, op.fingerprint,
                                                     outcome.reason, outcome.transient))
            else:
                got.dirty = True
        return got

    def sets(self, dest: str) -> bool:
        return any(q.destination == dest for q in self.quarantine_set)


def _stale_quarantines(record: UserRecord, state: UserState | None, got: _Settled) -> list[str]:
    """Quarantine entries that have nothing left to wait for: a row that can be read again, and
    a deleted user's update (unless something is still pending)."""
    if state is None:
        return []
    stale = [dest for dest, held in state.quarantine.items()
             if held.fingerprint == UNREADABLE_FINGERPRINT and dest not in got.quarantine_clear
             and not got.sets(dest)]
    if record.deleted and not got.dirty:
        stale += [dest for dest, held in state.quarantine.items()
                  if held.fingerprint != DELETION_FINGERPRINT
                  and dest not in got.quarantine_clear and dest not in stale]
    return stale


def _still_held(state: UserState | None, got: _Settled, clear: list[str]) -> list[Quarantine]:
    """Quarantine entries this pass leaves as they were."""
    if state is None:
        return []
    return [kept for dest, kept in state.quarantine.items()
            if dest not in clear and dest not in got.deliveries and not got.sets(dest)]


# What the quarantine keeps for a row the source cannot hand back whole: no payload was built,
# so any readable version of the row (or its deletion) differs from it and is sent.
UNREADABLE_FINGERPRINT = b"\xff" * 16


def unreadable(record: UserRecord, state: UserState | None, destinations: Collection[str],
               key_int: int | None, source_key: str | None) -> UserWrite:
    """A row with a value the database cannot hand back (invalid UTF-8, a timestamp of
    'infinity'): nothing is sent for it; it is quarantined at every destination with the reason
    (never the value), and looked at again when the row changes."""
    assert record.unreadable is not None
    reason = f"the row cannot be read: {record.unreadable}"
    return UserWrite(
        user_id=record.user_id,
        key_int=key_int,
        source_key=source_key,
        row_hash=record.row_hash,
        gone=bool(state and state.gone),
        dirty=False,
        quarantine_set=tuple(Quarantine(dest, UNREADABLE_FINGERPRINT, reason)
                             for dest in sorted(destinations)),
        seen_alive=bool(state and state.seen_alive),
        identity=state.identity if state else None,
    )
