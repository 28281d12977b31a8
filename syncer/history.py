"""The audit trail's entries: what a destination acknowledged (or refused) for a user, built from
the outcomes of its operations. Pure; the recorder writes them with the user's state row, in
the same transaction, so the trail never says more than the state records as done.

An entry holds field names, never their values, except the consents' new values (what the trail
is for); a refusal's reason goes through the same scrubbing as log lines."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

from syncer.mapping import CONSENTS
from syncer.model import (
    Endpoint,
    HistoryEntry,
    Op,
    Operation,
    Outcome,
    Result,
    Status,
)
from syncer.secret import scrub

OPERATIONS: Final = {
    Endpoint.BLUX_UPDATE: Operation.UPDATE,
    Endpoint.BLUX_DELETE: Operation.DELETE,
    Endpoint.NACHOCODE_WITHDRAW: Operation.WITHDRAW,
}
ALREADY_WITHDRAWN_STATUS: Final = 410


def wall_time(seconds: float) -> dt.datetime:
    """A Unix time as the state keeps times (naive UTC)."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def entries(outcomes: Sequence[Outcome], pass_id: int | None,
            committed_at: dt.datetime | None) -> tuple[HistoryEntry, ...]:
    """One entry per outcome a destination answered (delivered or refused); an operation still
    pending has nothing to say yet."""
    out: list[HistoryEntry] = []
    for outcome in outcomes:
        if outcome.status is Status.PENDING or outcome.acked_at is None:
            continue
        op = outcome.op
        fields, consents = changed(op)
        if outcome.status is Status.QUARANTINED:
            result, reason = Result.REFUSED, scrub(outcome.reason, ())[:500]
        elif outcome.answer == ALREADY_WITHDRAWN_STATUS:
            result, reason = Result.ALREADY_WITHDRAWN, ""
        else:
            result, reason = Result.DELIVERED, ""
        out.append(HistoryEntry(
            op.user_id, op.destination, str(op.endpoint), OPERATIONS[op.endpoint], result,
            fields, consents, pass_id,
            wall_time(outcome.sent_at) if outcome.sent_at is not None else None,
            wall_time(outcome.acked_at), committed_at, reason,
            whole=op.payload is not None and op.changed_fields is None))
    return tuple(out)


def changed(op: Op) -> tuple[tuple[str, ...], tuple[tuple[str, bool], ...]]:
    """The names of the fields an update changed (every field it carries, for a user new to the
    destination), and the new value of each consent among them that was sent."""
    payload = op.payload
    if payload is None:
        return (), ()
    sent = dict(payload.user_properties)
    if op.changed_fields is not None:
        names = op.changed_fields
    else:
        names = (*sent, *(f"custom.{k}" for k, _ in payload.custom_user_properties))
    consents = tuple((n, bool(sent[n])) for n in names if n in CONSENTS and n in sent)
    return tuple(names), consents


def consent_withdrawal(entry: HistoryEntry) -> bool:
    """An update that turned a consent off (a user new to the destination withdraws nothing)."""
    return (entry.operation is Operation.UPDATE and not entry.whole
            and any(not value for _, value in entry.consents))


def lag_seconds(entry: HistoryEntry) -> float | None:
    """From the change's commit to the destination's acknowledgement, when the commit is
    known."""
    if entry.committed_at is None:
        return None
    return max(0.0, (entry.acked_at - entry.committed_at).total_seconds())
