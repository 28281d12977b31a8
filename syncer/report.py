"""How results look on a terminal (rich tables; plain text when piped)."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from syncer.clock import utcnow
from syncer.commands import StatusReport
from syncer.results import BulkProgress, PassOutcome, PassResult

_COUNT_NAMES = {
    "scanned": "rows scanned",
    "candidates": "users examined",
    "unchanged": "examined, nothing to send",
    "updated": "Blux users updated",
    "deleted": "Blux users deleted",
    "withdrawn": "nachocode users withdrawn",
    "quarantined": "quarantined (refused by a destination)",
    "pending": "pending (sent next pass)",
    "field_problems": "fields left out (could not be normalised)",
    "invalid_keys": "rows with an invalid key",
    "deleted_before_first_pass": "already deleted before the first pass (history, not sent)",
}


# C0 and C1 controls, DEL, line and paragraph separators, and bidirectional overrides: in a user
# id or a message from the source or an API they could forge table lines or drive the terminal.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def visible(text: str) -> str:
    """``text`` with control characters shown escaped (``\\x1b``, ``\\n``, ``\\u202e``)."""
    return _CONTROL.sub(lambda m: _SHORT.get(m.group(0)) or _escape_code(ord(m.group(0))), text)


def _escape_code(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _cell(text: str) -> str:
    """Text from outside (the source, an API, the state) for a rich table or line."""
    return escape(visible(text))


def _ago(when: dt.datetime | None) -> str:
    if when is None:
        return "never"
    seconds = (utcnow() - when).total_seconds()
    if seconds < 90:
        return f"{seconds:.0f}s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f}m ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return f"{seconds / 86400:.0f}d ago"


def pass_summary(console: Console, result: PassResult) -> None:
    head = {PassOutcome.OK: "[green]done[/]", PassOutcome.PARTIAL: "[yellow]partly done[/]",
            PassOutcome.VALVE: "[red]stopped by the safety valve[/]",
            PassOutcome.CREDENTIALS: "[red]credentials rejected[/]",
            PassOutcome.STOPPED: "[yellow]stopped[/]",
            PassOutcome.FAILED: "[red]failed[/]"}.get(result.outcome, str(result.outcome))
    console.print(f"{result.kind} pass ({result.mode}): {head} in {result.seconds:.1f}s")
    table = Table(show_header=False, box=None, pad_edge=False)
    for key, name in _COUNT_NAMES.items():
        if result.counts.get(key):
            table.add_row(f"  {name}", str(result.counts[key]))
    requests = result.counts.requests
    if requests:
        table.add_row("  API requests", ", ".join(f"{k} {v}" for k, v in sorted(requests.items())))
    if not result.counts.get("candidates"):
        table.add_row("  nothing changed", "0 API calls")
    console.print(table)
    for dest, why in result.credentials.items():
        console.print(f"[red]{dest}:[/] {_cell(why)}")
    for ep, why in result.held.items():
        console.print(f"[yellow]{ep}:[/] {_cell(why)}")
    if result.message and result.outcome is not PassOutcome.CREDENTIALS:
        console.print(_cell(result.message))
    if result.counts.get("deleted_before_first_pass"):
        console.print("  [dim]rows deleted before syncer's first pass are recorded, not sent; "
                      'set [capture] initial_deletions = "send" before the first pass to send '
                      "them[/]")


def plan_report(console: Console, result: PassResult, show_values: bool = True) -> None:
    plan = result.plan
    assert plan is not None
    console.print(f"plan for a {result.kind} pass ({result.mode}); nothing is sent or recorded")
    table = Table("endpoint", "users", "calls", "time at the rate limit")
    for endpoint in sorted(set(plan.calls) | set(plan.ops)):
        table.add_row(str(endpoint), str(plan.ops.get(endpoint, 0)),
                      str(plan.calls.get(endpoint, 0)),
                      f"{plan.seconds.get(endpoint, 0.0):.1f}s")
    console.print(table)
    console.print(f"examined {result.counts.get('candidates', 0)} users, "
                  f"{result.counts.get('unchanged', 0)} with nothing to send; "
                  f"estimated time {plan.estimated_seconds:.1f}s (endpoints run in parallel)")
    verdict = "[red]would trip[/]" if plan.valve_trips else "[green]ok[/]"
    console.print(f"deletions of known users: {plan.known_deletions} of {plan.known_users} "
                  f"(safety valve allows {plan.valve_limit:.0f}): {verdict}")
    console.print("[dim]plan sends nothing, so it does not check the credentials[/]")
    if plan.position:
        console.print("capture position: " + _cell(json.dumps(plan.position, default=str)))
    if plan.samples:
        total = sum(plan.ops.values())
        sample = Table("user", "endpoint", "why", "fields (new values)",
                       title=f"sample: {len(plan.samples)} of {total} operations")
        sample.columns[3].overflow = "fold"
        for s in plan.samples:
            if show_values:
                fields = ", ".join(f"{k}={v!r}" for k, v in s.fields.items())
            else:
                fields = ", ".join(s.fields)
            sample.add_row(_cell(s.user_id), str(s.endpoint), s.reason, _cell(fields or "-"))
        console.print(sample)
        if not show_values:
            console.print("[dim]new values are shown on a terminal only (they are personal "
                          "data); --show-values shows them here too[/]")
    problems = result.counts.problems
    if problems:
        console.print("fields that cannot be normalised (left out): " +
                      ", ".join(f"{k} {v}" for k, v in sorted(problems.items())))


_BULK_KINDS = {"initial": "initial load", "reconcile": "reconcile",
               "backlog": "backlog (a resync or a mass change)"}


def bulk_line(bulk: BulkProgress, now: float) -> str:
    """Bulk work under way, how far, and how long it has left; live changes go ahead of it."""
    share = bulk.done / bulk.total if bulk.total else 1.0
    eta = bulk.eta_seconds()
    left = f", about {eta:.0f} s left" if eta is not None else ""
    stale = now - bulk.updated
    seen = f" (as of {stale:.0f} s ago)" if stale >= 1 else ""
    return (f"bulk work: {_BULK_KINDS.get(bulk.kind, bulk.kind)}, {bulk.done} of {bulk.total} "
            f"users ({share:.0%}){left}{seen}; live changes go ahead of it")


def status_report(console: Console, report: StatusReport) -> None:
    c = report.counts
    console.print(f"known users {c.known}, deleted {c.gone}, pending {c.dirty}; "
                  f"last successful pass {_ago(report.last_success)}")
    console.print("sender: " + _cell(report.sender or "none running (no `syncer run` holds "
                                                   "the sender lock)"))
    if report.oldest_pending is not None:
        by = ", ".join(f"{k} {v}" for k, v in sorted(report.pending_by_endpoint.items()))
        console.print(f"lag: the oldest pending user has waited since "
                      f"{_ago(report.oldest_pending)}" + (f" (last pass: {by})" if by else ""))
    if report.bulk is not None:
        console.print(bulk_line(report.bulk, time.time()))
    health = Table("destination", "health", "users held", "deleted/withdrawn", "quarantined")
    for dest, state in report.destinations.items():
        held = str(c.delivered.get(dest, 0)) if dest == "blux" else "-"
        health.add_row(dest, state, held, str(c.tombstones.get(dest, 0)),
                       str(c.quarantined.get(dest, 0)))
    console.print(health)
    if report.position:
        console.print("capture position: " + _cell(json.dumps(report.position, default=str)))
    passes = Table("#", "started", "kind", "outcome", "seconds", "sent", "message",
                   title="recent passes")
    passes.columns[3].no_wrap = True
    passes.columns[6].overflow = "fold"
    for p in report.passes:
        took = f"{(p.finished_at - p.started_at).total_seconds():.1f}" if p.finished_at else "-"
        sent = ", ".join(f"{k} {p.counts[k]}" for k in ("updated", "deleted", "withdrawn",
                                                        "quarantined", "pending")
                         if p.counts.get(k))
        passes.add_row(str(p.id), f"{p.started_at:%Y-%m-%d %H:%M:%S}", p.kind, p.outcome, took,
                       sent or "-", _cell((p.message or "")[:80]))
    console.print(passes)
    if report.quarantined:
        q = Table("destination", "user", "since", "attempts", "reason",
                  title=f"quarantined ({len(report.quarantined)} of "
                        f"{sum(c.quarantined.values())})")
        q.columns[4].overflow = "fold"
        for row in report.quarantined:
            q.add_row(row.destination, _cell(row.user_id), _ago(row.since), str(row.attempts),
                      _cell(row.reason[:100]))
        console.print(q)
    if report.problems:
        pr = Table("user", "field", "since", "reason",
                   title=f"fields left out (newest first; {c.problems} users in all)")
        for problem in report.problems:
            pr.add_row(_cell(problem.user_id), _cell(problem.field), _ago(problem.since),
                       _cell(problem.reason))
        console.print(pr)
