"""What a pass came to: its kind, its outcome, and its counts. Value objects, no I/O.

:class:`PassCounts` is what the passes table keeps (as JSON, :meth:`PassCounts.to_json`), what
``syncer once`` prints, what the metrics count and what ``status`` reads back: totals by name,
and per endpoint what was requested, left pending or quarantined.
"""

from __future__ import annotations

import enum
import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from syncer.model import Endpoint

if TYPE_CHECKING:
    from syncer.plan import Plan


class PassKind(enum.StrEnum):
    INCREMENTAL = "incremental"   # the capture's changes only
    RECONCILE = "reconcile"       # the whole table against the state (snapshot mode, first pass)


class PassOutcome(enum.StrEnum):
    RUNNING = "running"           # recorded at the start; a pass that never finished keeps it
    OK = "ok"                     # everything due was delivered
    PARTIAL = "partial"           # something is owed: pending, quarantined, unreadable
    VALVE = "valve"               # the safety valve stopped it
    CREDENTIALS = "credentials"   # a destination refused the keys
    STOPPED = "stopped"           # asked to stop (SIGTERM, Ctrl-C)
    FAILED = "failed"             # a database failed (or something unexpected)
    DRY_RUN = "dry-run"           # `syncer plan`: nothing sent

    @property
    def exit_code(self) -> int:
        """The command line's exit code for a pass that ended so (130 for a stop is the
        CLI's own business: it knows which signal)."""
        if self is PassOutcome.CREDENTIALS:
            return 3
        return 0 if self in (PassOutcome.OK, PassOutcome.DRY_RUN) else 1

    @property
    def completed(self) -> bool:
        """The pass ran to its end (whatever it could not deliver)."""
        return self in (PassOutcome.OK, PassOutcome.PARTIAL, PassOutcome.VALVE)


# Totals a pass keeps, in the order a person reads them.
TOTALS: Final = ("scanned", "candidates", "unchanged", "updated", "deleted", "withdrawn",
                 "quarantined", "pending", "left", "field_problems", "invalid_keys",
                 "unreadable_rows", "deletions_not_sent", "recreated", "consents_cleared",
                 "deleted_before_first_pass")
DELIVERED: Final = {Endpoint.BLUX_UPDATE: "updated", Endpoint.BLUX_DELETE: "deleted",
                    Endpoint.NACHOCODE_WITHDRAW: "withdrawn"}


def _endpoints(data: object) -> Counter[Endpoint]:
    out: Counter[Endpoint] = Counter()
    if isinstance(data, Mapping):
        for name, n in data.items():
            try:
                out[Endpoint(name)] = int(n)
            except ValueError:   # an endpoint a later version added: not ours to count
                continue
    return out


@dataclass(slots=True)
class PassCounts:
    """Totals by name (``counts["updated"]``, 0 when absent) and per endpoint."""

    totals: Counter[str] = field(default_factory=Counter)
    requests: Counter[Endpoint] = field(default_factory=Counter)      # API requests sent
    pending: Counter[Endpoint] = field(default_factory=Counter)       # operations left pending
    quarantined: Counter[Endpoint] = field(default_factory=Counter)   # operations quarantined
    would: Counter[Endpoint] = field(default_factory=Counter)         # `plan`: operations due
    problems: Counter[str] = field(default_factory=Counter)           # fields left out, by field
    credentials: set[str] = field(default_factory=set)    # destinations that refused the keys
    held: set[Endpoint] = field(default_factory=set)      # endpoints that held operations back

    def __getitem__(self, name: str) -> int:
        return self.totals[name]

    def __contains__(self, name: object) -> bool:
        return bool(isinstance(name, str) and self.totals[name])

    def get(self, name: str, default: int = 0) -> int:
        return self.totals[name] if self.totals[name] else default

    def add(self, name: str, n: int = 1) -> None:
        self.totals[name] += n

    @property
    def requests_total(self) -> int:
        return sum(self.requests.values())

    def to_json(self) -> dict[str, object]:
        """Only what is not zero or empty, so that an idle pass keeps almost nothing."""
        out: dict[str, object] = {}
        for name, counter in (("totals", self.totals), ("requests", self.requests),
                              ("pending", self.pending), ("quarantined", self.quarantined),
                              ("would", self.would), ("problems", self.problems)):
            kept = {str(k): v for k, v in sorted(counter.items()) if v}
            if kept:
                out[name] = kept
        if self.credentials:
            out["credentials"] = sorted(self.credentials)
        if self.held:
            out["held"] = sorted(str(e) for e in self.held)
        return out

    @classmethod
    def from_json(cls, data: object) -> PassCounts:
        if not isinstance(data, Mapping):
            return cls()
        totals = data.get("totals")
        problems = data.get("problems")
        held = data.get("held")
        return cls(
            totals=Counter({str(k): int(v) for k, v in totals.items()})
            if isinstance(totals, Mapping) else Counter(),
            requests=_endpoints(data.get("requests")),
            pending=_endpoints(data.get("pending")),
            quarantined=_endpoints(data.get("quarantined")),
            would=_endpoints(data.get("would")),
            problems=Counter({str(k): int(v) for k, v in problems.items()})
            if isinstance(problems, Mapping) else Counter(),
            credentials={str(d) for d in data.get("credentials") or ()},
            held={Endpoint(e) for e in (held or ()) if e in Endpoint._value2member_map_},
        )


@dataclass(frozen=True, slots=True)
class PassResult:
    pass_id: int | None
    kind: PassKind
    mode: str
    outcome: PassOutcome
    counts: PassCounts
    credentials: dict[str, str] = field(default_factory=dict)   # destination -> why refused
    held: dict[str, str] = field(default_factory=dict)          # endpoint -> why held back
    message: str | None = None
    seconds: float = 0.0
    plan: Plan | None = None
    more: bool = False  # the capture left work: run the next pass right away
    position: dict[str, object] = field(default_factory=dict)  # where the capture stands

    @property
    def exit_code(self) -> int:
        return self.outcome.exit_code


# The cursors entry where a pass keeps its bulk work in progress (for `syncer status`).
BULK: Final = "bulk"


@dataclass(slots=True)
class BulkProgress:
    """Bulk work under way in a pass: an initial load, a reconcile, or a large backlog (a
    resync, a mass change). Times are Unix seconds."""

    kind: str      # initial | reconcile | backlog
    total: int     # users to examine
    done: int
    started: float
    updated: float

    def eta_seconds(self) -> float | None:
        """Time left at the pace so far (None before there is a pace)."""
        spent = self.updated - self.started
        if self.done <= 0 or spent <= 0:
            return None
        return max(0.0, (self.total - self.done) * spent / self.done)

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "total": self.total, "done": self.done,
                           "started": self.started, "updated": self.updated})

    @classmethod
    def from_json(cls, text: str | None) -> BulkProgress | None:
        """The stored progress; None when there is none (or it cannot be read)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["kind"]), int(data["total"]), int(data["done"]),
                       float(data["started"]), float(data["updated"]))
        except (ValueError, KeyError, TypeError):
            return None
