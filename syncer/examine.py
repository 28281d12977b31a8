"""Examining candidates: read their rows, map and normalise them, and diff each user against the
state (:mod:`syncer.diff`) into the operations to send. Each user is examined once per pass,
however many times a capture names it; keys that cannot be a user, and duplicates, are reported
by key and never sent."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import structlog

from syncer import diff, normalize
from syncer.clock import utcnow
from syncer.mapping import CONSENTS
from syncer.model import (
    LIVE,
    Endpoint,
    HistoryEntry,
    KeyKind,
    Op,
    Outcome,
    UserRecord,
    UserState,
    UserWrite,
)
from syncer.normalize import Invalid
from syncer.results import PassCounts
from syncer.runtime import Runtime

log = structlog.get_logger("syncer.examine")


@dataclass(slots=True)
class Work:
    """One examined user: what the source says, what the state said, what to send, and the
    outcomes as they come."""

    record: UserRecord
    state: UserState | None
    key_int: int | None
    source_key: str | None
    ops: list[Op]
    outcomes: list[Outcome] = field(default_factory=list)
    write: UserWrite | None = None   # what to record when there is nothing to send
    live: bool = False               # found by the live capture (see syncer.live)
    seq: int = 0                     # examined after every work with a lower one

    def settled(self, history: tuple[HistoryEntry, ...] = ()) -> UserWrite:
        """The state row once every operation has its outcome (with its audit trail)."""
        return self.write or diff.settle(self.record, self.state, self.outcomes, self.key_int,
                                         self.source_key, history)

    @property
    def deletes(self) -> bool:
        """Whether this user's operations delete or withdraw anything."""
        return any(op.endpoint is not Endpoint.BLUX_UPDATE for op in self.ops)


@dataclass(slots=True)
class Rules:
    """How one pass diffs: decided before the first user is examined."""

    key_kind: KeyKind = KeyKind.TEXT
    retry_deletions: bool = False     # a reconcile pass tries quarantined deletions again
    skip_history: bool = False        # the first pass records rows already deleted, sends none
    send_unseen: bool = False         # ... or sends them (initial_deletions = "send")
    recreated: frozenset[object] = frozenset()   # keys the capture saw deleted and re-created


class Examiner:
    """Examines candidates for one pass (on the source thread) and keeps what it has seen."""

    def __init__(self, rt: Runtime, rules: Rules, counts: PassCounts) -> None:
        self.rt = rt
        self.rules = rules
        self.counts = counts
        self.seen_keys: set[object] = set()   # source keys examined in this pass (see below)
        self.seen_uids: set[str] = set()      # and their user ids (for keys that are not ints)
        self.recreated = False                # a re-created user waits for the next pass
        self._seq = 0

    def examine(self, keys: Sequence[object], live: bool = False) -> list[Work]:
        """Read these users' rows, map them, and diff them against the state. ``live``: found
        by the live capture, examined again even if the bulk already was (a newer reading),
        and sent ahead of the bulk."""
        self.rt.beat()
        records = self._records(keys, live)
        states = self.rt.state.ledger.lookup(list(records))
        now = utcnow()
        works = [self._diff(record, states.get(uid), now) for uid, record in records.items()]
        self._seq += 1
        for work in works:
            work.seq = self._seq
            if live:
                work.live = True
                work.ops = [replace(op, priority=op.priority - LIVE) for op in work.ops]
        return works

    def _records(self, keys: Sequence[object], live: bool = False) -> dict[str, UserRecord]:
        """What the source says about these keys: a row, or a deletion for a key with none."""
        records: dict[str, UserRecord] = {}
        twice: set[str] = set()
        for raw in self.rt.source.read(keys):
            try:
                record = self.rt.mapping.record(raw)
            except Invalid as exc:
                self.invalid_key(raw.key, str(exc))
                continue
            if record.user_id in records or record.user_id in twice:
                twice.add(record.user_id)
                continue
            records[record.user_id] = record
        for dup in twice:  # which row is the user? neither is sent until the source says
            del records[dup]
            self.invalid_key(dup, "two rows of the source give this user id (duplicate key, "
                                  "or keys that differ only by surrounding spaces)")
        for key in keys:
            wanted = normalize.user_id_or_none(key)
            if wanted is not None and wanted not in records and wanted not in twice:
                records[wanted] = UserRecord(wanted, key, None, deleted=True)
        self._once(records, live)
        return records

    def _once(self, records: dict[str, UserRecord], live: bool) -> None:
        """Each user once per pass: a key the pass examined already is left out (a live
        reading is a newer one, and is kept)."""
        by_int = self.rules.key_kind is KeyKind.INT
        for uid, record in list(records.items()):
            if live:
                pass   # a newer reading of a user the bulk may have examined already
            elif record.source_key in self.seen_keys:      # the same key named twice: once
                del records[uid]
            elif not by_int and uid in self.seen_uids:
                if not record.deleted:
                    self.invalid_key(record.source_key,
                                     "another row already gave this user id in this pass (keys "
                                     "that differ only by surrounding spaces?); only that one "
                                     "was sent")
                del records[uid]
        if live or not by_int:
            # Integer keys from the capture are distinct already (a million of them would
            # cost memory for nothing): only those the live lane examined are kept.
            self.seen_keys.update(r.source_key for r in records.values())
        if not by_int:   # distinct integers cannot share a user id
            self.seen_uids.update(records)

    def _diff(self, record: UserRecord, state: UserState | None, now: dt.datetime) -> Work:
        """What to send for one user (and what to record when nothing is)."""
        rt, rules, counts = self.rt, self.rules, self.counts
        uid = record.user_id
        key = record.source_key
        key_int = key if (rules.key_kind is KeyKind.INT and type(key) is int
                          and -(2**63) <= key < 2**63) else None
        text = key if isinstance(key, str) and key != uid else None
        if not record.deleted and (key in rules.recreated
                                   or diff.identity_changed(record, state)):
            record = replace(record, recreated=True)
        work = Work(record, state, key_int, text, [])
        if record.unreadable is not None:
            # Neither alive nor deleted as far as syncer can tell: nothing is sent for it.
            counts.add("unreadable_rows")
            log.warning("source.unreadable_row", user_id=uid, reason=record.unreadable)
            work.write = diff.unreadable(record, state, rt.destinations, key_int, text)
            return work
        if rules.skip_history and record.deleted and state is None:
            # Deleted before syncer ever ran: recorded as history, not sent.
            counts.add("deleted_before_first_pass")
            return work
        work.ops = diff.operations(record, state, rt.mapping, rt.destinations,
                                   retry_deletions=rules.retry_deletions,
                                   send_unseen=rules.send_unseen, now=now)
        if not work.ops and diff.unseen_deletion(record, state) and not rules.send_unseen:
            counts.add("deletions_not_sent")
            log.warning("diff.unseen_deletion", user_id=uid,
                        reason="deleted or gone in the source, but never seen alive: nothing "
                               "is deleted or withdrawn for it")
        if record.recreated and work.deletes:
            self.recreated = True   # the new person is sent by the next pass, right away
            counts.add("recreated")
            log.info("diff.recreated", user_id=uid,
                     hint="the previous person is deleted and withdrawn first; the new one is "
                          "sent whole at the next pass")
        self._note_cleared_consents(work.ops)
        for problem in record.problems:
            counts.add("field_problems")
            counts.problems[problem.field] += 1
            log.debug("mapping.field_problem", user_id=uid, field=problem.field,
                      reason=problem.reason)
        return work

    def _note_cleared_consents(self, ops: list[Op]) -> None:
        """A consent that Blux had and the source no longer gives (NULL or unreadable) cannot be
        removed at Blux: say so, by user id (``[mapping] null_consents = "false"`` sends it as
        false instead)."""
        for op in ops:
            if op.payload is None or not op.changed_fields:
                continue
            sent = dict(op.payload.user_properties)
            for name in op.changed_fields:
                if name in CONSENTS and name not in sent:
                    self.counts.add("consents_cleared")
                    log.warning("mapping.consent_cleared", user_id=op.user_id, field=name,
                                hint="Blux keeps its last value; set the column to false to "
                                     "withdraw, or [mapping] null_consents = \"false\"")

    def invalid_key(self, key: object, reason: str) -> None:
        self.counts.add("invalid_keys")
        log.warning("source.invalid_key", key=repr(key)[:64], reason=reason)
