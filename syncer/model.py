"""Value objects that flow through a pass: what the source says, what the state remembers, what to
send, and what came of it. Frozen, slotted, no behaviour beyond small derived properties."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from typing import Final

from syncer.normalize import JsonScalar

BLUX: Final = "blux"
NACHOCODE: Final = "nachocode"

# What the state keeps as the fingerprint of a deletion (it has no payload).
DELETION_FINGERPRINT: Final = b"\x00" * 16


class KeyKind(enum.StrEnum):
    """How source keys are ordered, so the source and the state can be merged in one order."""

    INT = "int"
    UUID = "uuid"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class FieldProblem:
    field: str
    reason: str


@dataclass(frozen=True, slots=True)
class RawRow:
    """One row as read from the source: its key, the database's hash of the mapped columns,
    whether its soft-delete column is set, and the mapped column values (None when only the hash
    was read)."""

    key: object
    row_hash: int | None
    deleted: bool
    values: dict[str, object] | None = None
    unreadable: tuple[str, ...] = ()  # columns whose value the database could not hand back
    created: object = None            # [capture] created_column, in reads without the values


@dataclass(frozen=True, slots=True)
class BluxPayload:
    user_properties: tuple[tuple[str, JsonScalar], ...]
    custom_user_properties: tuple[tuple[str, JsonScalar], ...]
    fingerprint: bytes
    field_tags: bytes

    def body(self, user_id: str) -> dict[str, object]:
        entry: dict[str, object] = {"user_id": user_id}
        if self.user_properties:
            entry["user_properties"] = dict(self.user_properties)
        if self.custom_user_properties:
            entry["custom_user_properties"] = dict(self.custom_user_properties)
        return entry

    def values(self) -> dict[str, JsonScalar]:
        """Every field by its display name (custom ones prefixed ``custom.``)."""
        out: dict[str, JsonScalar] = dict(self.user_properties)
        out.update((f"custom.{k}", v) for k, v in self.custom_user_properties)
        return out


@dataclass(frozen=True, slots=True)
class UserRecord:
    """What the source says about one user now."""

    user_id: str
    source_key: object
    row_hash: int | None
    deleted: bool
    payload: BluxPayload | None = None
    problems: tuple[FieldProblem, ...] = ()
    identity: int | None = None   # hash of [capture] created_column
    recreated: bool = False       # the key was deleted and re-created since the last pass
    unreadable: str | None = None  # why the row cannot be synced (a value it cannot read)


@dataclass(frozen=True, slots=True)
class Delivered:
    """What a destination last acknowledged for a user."""

    fingerprint: bytes | None
    field_tags: bytes | None
    deleted: bool


@dataclass(frozen=True, slots=True)
class Quarantine:
    destination: str
    fingerprint: bytes
    reason: str
    transient: bool = False  # 5xx/timeouts for this user alone: tried again after a while
    last_attempt: dt.datetime | None = None


@dataclass(frozen=True, slots=True)
class UserState:
    """What the state remembers about one user."""

    user_id: str
    row_hash: int | None = None
    gone: bool = False
    dirty: bool = False
    deliveries: dict[str, Delivered] = field(default_factory=dict)
    quarantine: dict[str, Quarantine] = field(default_factory=dict)
    seen_alive: bool = False      # the source once gave this user alive
    identity: int | None = None   # hash of [capture] created_column as last seen
    recreating: bool = False      # the previous person of this key is still owed its deletion


class OpKind(enum.StrEnum):
    UPSERT = "upsert"
    DELETE = "delete"
    WITHDRAW = "withdraw"


class Endpoint(enum.StrEnum):
    BLUX_UPDATE = "blux.update"
    BLUX_DELETE = "blux.delete"
    NACHOCODE_WITHDRAW = "nachocode.withdraw"

    @property
    def destination(self) -> str:
        return self.value.split(".", 1)[0]


# Operation priorities, most urgent first. The diff gives URGENT (a deletion, a withdrawal, a
# consent turning false) or NORMAL; operations found by the live capture while bulk work is being
# sent (see :mod:`syncer.live`) go one step ahead of the bulk ones of their kind: live urgent 0,
# bulk urgent 1, live normal 2, bulk normal 3.
URGENT: Final = 1
NORMAL: Final = 3
LIVE: Final = 1   # subtracted from the priority of a live operation


@dataclass(frozen=True, slots=True)
class Op:
    """One thing to send for one user."""

    endpoint: Endpoint
    user_id: str
    payload: BluxPayload | None = None
    priority: int = NORMAL
    changed_fields: tuple[str, ...] | None = None
    reason: str = ""

    @property
    def destination(self) -> str:
        return self.endpoint.destination

    @property
    def fingerprint(self) -> bytes:
        return self.payload.fingerprint if self.payload else DELETION_FINGERPRINT


class Status(enum.StrEnum):
    DELIVERED = "delivered"
    QUARANTINED = "quarantined"
    PENDING = "pending"  # not delivered this pass; tried again next pass


@dataclass(frozen=True, slots=True)
class Outcome:
    op: Op
    status: Status
    reason: str = ""
    transient: bool = False  # quarantined for 5xx/timeouts that only this user gets
    sent_at: float | None = None    # wall time (Unix) the request that settled it left
    acked_at: float | None = None   # ... and its answer arrived
    answer: int | None = None       # that answer's HTTP status (nachocode 410: already withdrawn)


@dataclass(frozen=True, slots=True)
class UserWrite:
    """Everything a pass writes to the state for one user, once all its operations are settled."""

    user_id: str
    key_int: int | None
    source_key: str | None
    row_hash: int | None
    gone: bool
    dirty: bool
    deliveries: dict[str, Delivered | None] = field(default_factory=dict)  # None: forget
    quarantine_set: tuple[Quarantine, ...] = ()
    quarantine_clear: tuple[str, ...] = ()
    problems: tuple[FieldProblem, ...] | None = None
    seen_alive: bool = False
    identity: int | None = None
    recreating: bool = False
    history: tuple[HistoryEntry, ...] = ()   # the audit trail's entries, in the same transaction


class Operation(enum.StrEnum):
    """What the audit trail calls an operation."""

    UPDATE = "update"
    DELETE = "delete"
    WITHDRAW = "withdraw"


class Result(enum.StrEnum):
    """How a destination answered an operation, as the audit trail keeps it."""

    DELIVERED = "delivered"
    ALREADY_WITHDRAWN = "already_withdrawn"   # nachocode 410: what was wanted
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One operation a destination acknowledged or refused, as the audit trail keeps it: field
    names only (consents with their new value, e.g. ``marketing_notification_consent=false``),
    never a field's value otherwise."""

    user_id: str
    destination: str
    endpoint: str
    operation: Operation
    result: Result
    fields: tuple[str, ...]
    consents: tuple[tuple[str, bool], ...]
    pass_id: int | None
    sent_at: dt.datetime | None
    acked_at: dt.datetime
    committed_at: dt.datetime | None = None   # the change's commit (outbox row, watermark)
    reason: str = ""
    whole: bool = False                       # an update carrying every field (new there)
    id: int | None = None                     # its row, once stored
