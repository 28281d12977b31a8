"""``syncer history`` and ``syncer audit``: what the audit trail (``syncer_history``) says, for one
user, or as an export of consent withdrawals, consent changes and deletions with each platform's
acknowledgement and the lag from the commit.

An export event is one thing that happened to a user: a consent update at Blux, or a deletion,
which is a Blux delete and a nachocode withdrawal (possibly acknowledged in different passes:
entries of one user join the open deletion until each destination has acknowledged it)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from syncer import history as trail
from syncer.commands import missing_state
from syncer.config import Config
from syncer.errors import ConfigError, StateMissing
from syncer.model import BLUX, NACHOCODE, HistoryEntry, Operation, Result
from syncer.report import visible
from syncer.state import History
from syncer.state.sql import SqlStateStore

KINDS: Final = ("withdrawals", "deletions", "consent")
CONSENT_WITHDRAWN: Final = "consent_withdrawn"
CONSENT_GIVEN: Final = "consent_given"
CONSENT_FIRST: Final = "consents_first_sent"   # a user new to Blux: its consents as first sent
DELETED: Final = "deleted"
_WANTED: Final = {
    "withdrawals": {CONSENT_WITHDRAWN, DELETED},
    "deletions": {DELETED},
    "consent": {CONSENT_WITHDRAWN, CONSENT_GIVEN, CONSENT_FIRST},
    None: {CONSENT_WITHDRAWN, CONSENT_GIVEN, CONSENT_FIRST, DELETED},
}
PLATFORMS: Final = (BLUX, NACHOCODE)


@dataclass(slots=True)
class AuditEvent:
    """One consent change or deletion, with what each platform answered."""

    event: str
    user_id: str
    committed_at: dt.datetime | None
    consents: tuple[tuple[str, bool], ...] = ()
    acked: dict[str, dt.datetime] = field(default_factory=dict)   # delivered (or 410)
    results: dict[str, str] = field(default_factory=dict)         # destination: result
    passes: list[int] = field(default_factory=list)

    def lag(self, destination: str | None = None) -> float | None:
        """Seconds from the commit to the acknowledgement (of this platform, else of the last
        one); None without a commit time or an acknowledgement."""
        times = [self.acked[destination]] if destination in self.acked else (
            [] if destination is not None else list(self.acked.values()))
        if self.committed_at is None or not times:
            return None
        return max(0.0, (max(times) - self.committed_at).total_seconds())

    def add(self, entry: HistoryEntry) -> None:
        result = str(entry.result)
        if entry.result is Result.REFUSED:
            result += f": {entry.reason}"
        else:
            self.acked[entry.destination] = entry.acked_at
        self.results[entry.destination] = result
        if entry.committed_at is not None and self.committed_at is None:
            self.committed_at = entry.committed_at
        if entry.pass_id is not None and entry.pass_id not in self.passes:
            self.passes.append(entry.pass_id)


@dataclass(frozen=True, slots=True)
class Summary:
    count: int
    with_commit_time: int
    worst_lag_seconds: float | None
    p95_lag_seconds: float | None


def parse_day(text: str | None, option: str, *, end: bool = False) -> dt.datetime | None:
    """A ``--since``/``--until`` value: a date (``--until``: up to the end of that day) or an
    ISO date and time; UTC unless it names its zone."""
    if text is None:
        return None
    try:
        if len(text.strip()) == 10:
            day = dt.date.fromisoformat(text.strip())
            return dt.datetime.combine(day + dt.timedelta(days=1 if end else 0), dt.time())
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} is not a date (YYYY-MM-DD) or an ISO date and "
                          "time") from None
    return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment


def events(entries: Iterable[HistoryEntry], kind: str | None = None) -> list[AuditEvent]:
    """The export's events, from audit-trail entries oldest first, in the order they began."""
    wanted = _WANTED[kind]
    out: list[AuditEvent] = []
    open_deletions: dict[str, AuditEvent] = {}
    for entry in entries:
        if entry.operation is Operation.UPDATE:
            if entry.result is not Result.REFUSED and entry.destination == BLUX:
                open_deletions.pop(entry.user_id, None)   # alive again: a later one is new
            name = _consent_event(entry)
            if name is not None and name in wanted:
                event = AuditEvent(name, entry.user_id, entry.committed_at, entry.consents)
                event.add(entry)
                out.append(event)
            continue
        current = open_deletions.get(entry.user_id)
        if current is None or entry.destination in current.acked:
            current = open_deletions[entry.user_id] = AuditEvent(DELETED, entry.user_id, None)
            if DELETED in wanted:
                out.append(current)
        current.add(entry)
    return out


def _consent_event(entry: HistoryEntry) -> str | None:
    if not entry.consents:
        return None
    if entry.whole:
        return CONSENT_FIRST
    return CONSENT_WITHDRAWN if trail.consent_withdrawal(entry) else CONSENT_GIVEN


def summarise(found: Sequence[AuditEvent]) -> Summary:
    """How many events, and the worst and 95th-percentile (nearest rank) lag of those with a
    commit time."""
    lags = sorted(lag for e in found if (lag := e.lag()) is not None)
    p95 = lags[max(0, math.ceil(0.95 * len(lags)) - 1)] if lags else None
    return Summary(len(found), len(lags), lags[-1] if lags else None, p95)


def _open(config: Config) -> SqlStateStore:
    missing = missing_state(config)
    if missing is not None:
        raise StateMissing(missing)
    return SqlStateStore.from_url(config.state.url)


def history(config: Config, user_id: str, destination: str | None = None
            ) -> list[HistoryEntry]:
    """One user's timeline across passes (``syncer history``), oldest first."""
    store = _open(config)
    try:
        return store.history.timeline(user_id.strip(), destination)
    finally:
        store.close()


def audit(config: Config, since: dt.datetime | None = None, until: dt.datetime | None = None,
          kind: str | None = None) -> tuple[list[AuditEvent], Summary]:
    """The export (``syncer audit``): events acknowledged in [since, until), and a summary."""
    store = _open(config)
    try:
        found = collect(store.history, since, until, kind)
    finally:
        store.close()
    return found, summarise(found)


def collect(source: History, since: dt.datetime | None, until: dt.datetime | None,
            kind: str | None) -> list[AuditEvent]:
    return events(source.between(since, until, plain_updates=False), kind)


# ----------------------------------------------------------------------------- output


def stamp(moment: dt.datetime | None) -> str:
    """A state time (naive UTC) as ISO 8601 with its zone; empty for None."""
    return "" if moment is None else moment.isoformat(timespec="milliseconds") + "Z"


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


COLUMNS: Final = ("event", "user_id", "consents", "committed_at", "blux_acked_at",
                  "blux_result", "blux_lag_seconds", "nachocode_acked_at", "nachocode_result",
                  "nachocode_lag_seconds", "lag_seconds", "passes")


def event_row(e: AuditEvent) -> dict[str, str]:
    row = {"event": e.event, "user_id": e.user_id,
           "consents": ",".join(f"{n}={'true' if v else 'false'}" for n, v in e.consents),
           "committed_at": stamp(e.committed_at)}
    for dest in PLATFORMS:
        row[f"{dest}_acked_at"] = stamp(e.acked.get(dest))
        row[f"{dest}_result"] = e.results.get(dest, "")
        row[f"{dest}_lag_seconds"] = _seconds(e.lag(dest))
    row["lag_seconds"] = _seconds(e.lag())
    row["passes"] = " ".join(str(p) for p in e.passes)
    return row


def as_csv(found: Sequence[AuditEvent]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(event_row(e) for e in found)
    return buffer.getvalue()


def summary_json(summary: Summary) -> dict[str, object]:
    return {"count": summary.count, "with_commit_time": summary.with_commit_time,
            "worst_lag_seconds": summary.worst_lag_seconds,
            "p95_lag_seconds": summary.p95_lag_seconds}


def as_json(found: Sequence[AuditEvent], summary: Summary) -> str:
    return json.dumps({"events": [event_row(e) for e in found],
                       "summary": summary_json(summary)}, indent=2)


def summary_line(summary: Summary) -> str:
    worst, p95 = summary.worst_lag_seconds, summary.p95_lag_seconds
    lag = (f"lag from the commit (of {summary.with_commit_time}): worst {worst:.3f} s, "
           f"p95 {p95:.3f} s" if worst is not None and p95 is not None
           else "no commit times known (snapshot capture): no lag")
    return f"{summary.count} events; {lag}"


def entry_json(e: HistoryEntry) -> dict[str, object]:
    return {"destination": e.destination, "endpoint": e.endpoint,
            "operation": str(e.operation), "result": str(e.result), "reason": e.reason or None,
            "fields": list(e.fields), "all_fields": e.whole,
            "consents": {n: v for n, v in e.consents}, "pass_id": e.pass_id,
            "committed_at": stamp(e.committed_at) or None, "sent_at": stamp(e.sent_at) or None,
            "acked_at": stamp(e.acked_at)}


def timeline_lines(user_id: str, entries: Sequence[HistoryEntry]) -> list[str]:
    """``syncer history`` as text: one line per operation, oldest first."""
    if not entries:
        return [f"no audit-trail entries for user {visible(user_id)}"]
    lines = [f"user {visible(user_id)}: {len(entries)} entries"]
    for e in entries:
        what = ("all fields: " if e.whole else "fields: ") + (", ".join(e.fields) or "-")
        consents = " ".join(f"{n}={'true' if v else 'false'}" for n, v in e.consents)
        parts = [stamp(e.acked_at), f"{e.endpoint:<18}", f"{e.operation!s:<8}",
                 str(e.result) + (f" ({visible(e.reason)})" if e.reason else "")]
        if e.operation is Operation.UPDATE:
            parts.append(what)
        if consents:
            parts.append(consents)
        parts.append(f"pass {e.pass_id if e.pass_id is not None else '-'}")
        parts.append(f"sent {stamp(e.sent_at) or '-'}")
        if e.committed_at is not None:
            parts.append(f"committed {stamp(e.committed_at)}")
        lines.append("  ".join(parts))
    return lines
