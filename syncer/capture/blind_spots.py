"""Changes a capture mode cannot see between reconciles, in words for ``plan`` and ``status``.
Pure: read from the config alone.

* watermark: an UPDATE that does not move the column (Django's ``QuerySet.update()`` skips
  ``auto_now``; raw SQL; a data migration) and hard deletes; a table of the query with no
  watermark column of its own.
* outbox (and watermark): a table the query reads that has no ``[[source.tables]]`` entry.
"""

from __future__ import annotations

import re

from syncer.config import Config

_READS = re.compile(r"\b(?:from|join)\s+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)",
                    re.IGNORECASE)

OUTBOX_SEES_ALL = 'mode = "outbox" sees every change (`syncer outbox install`)'


def tables_read(query: str) -> list[str]:
    """The tables a query names after FROM or JOIN (without their schema), in order."""
    return list(dict.fromkeys(m.split(".")[-1] for m in _READS.findall(query)))


def blind_spots(config: Config) -> list[str]:
    """What the configured capture misses until the next reconcile, each with the fix."""
    source, capture = config.source, config.capture
    if capture.mode == "snapshot":
        return []
    notes: list[str] = []
    declared = {t.name.lower() for t in source.tables}
    if source.query is not None:
        unlisted = [t for t in tables_read(source.query) if t.lower() not in declared]
        if unlisted and (source.tables or capture.mode == "watermark"):
            notes.append(f"the query reads {', '.join(unlisted)}, which no [[source.tables]] "
                         "entry declares: a change there is not seen until the reconcile; "
                         "declare it (name, key)")
    if capture.mode != "watermark":
        return notes
    if source.watermarks:
        bare = [t.name for t in source.tables if not t.watermark_column]
        if bare:
            notes.append(f"{', '.join(bare)} has no watermark_column: a change there (an "
                         "e-mail change in a table without a timestamp) waits for the "
                         f"reconcile; {OUTBOX_SEES_ALL}")
        columns = ", ".join(f"{t}.{c}" for t, c in source.watermarks.items())
    else:
        columns = str(capture.watermark_column)
    notes.append(f"an UPDATE that does not set {columns} is not seen until the reconcile: "
                 "Django's QuerySet.update() skips auto_now, and so do raw SQL and data "
                 f"migrations (a consent withdrawal can wait a day); hard deletes too. "
                 f"{OUTBOX_SEES_ALL}")
    return notes


def soft_delete_note(config: Config) -> dict[str, object]:
    """How ``plan`` reads ``[capture] soft_delete_column`` (a column or an expression such as
    ``NOT is_active``), so the operator sees what would count as a deletion."""
    soft = config.capture.soft_delete_column
    if not soft:
        return {}
    return {"soft_delete": (
        f"{soft}: true, a date or timestamp, a non-zero number or a yes-word means deleted "
        "(a Blux delete and a nachocode withdrawal, only for users syncer saw alive); false, "
        "NULL, 0, a zero date and other text mean alive")}
