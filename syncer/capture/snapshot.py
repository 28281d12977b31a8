"""Snapshot capture: stream the whole source in key order against the state in the same order.

Each side is read once, in one ordered stream: the source as (key, row hash, soft-delete flag), the
state as (user, row hash delivered). Rows whose hash equals the state's are unchanged and cost
nothing more; only the others are read whole later. A known user missing from the source is
confirmed missing by a lookup before it counts as a deletion, so a difference between the two
orderings (collations, padded keys) can cost a lookup but never a wrong deletion.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from syncer import normalize
from syncer.capture import Candidates, CaptureContext
from syncer.model import KeyKind, RawRow
from syncer.normalize import Invalid
from syncer.state import ScanRow

_VERIFY_CHUNK = 1000


def _next(it: Iterator[Any]) -> Any:
    return next(it, None)


def merge(
        source_rows: Iterator[RawRow], state_rows: Iterator[ScanRow], kind: KeyKind,
        out: Candidates, ctx: CaptureContext,
        on_missing: Callable[[list[ScanRow]], None]) -> None:
    """Walk both ordered streams once. Fills ``out.changed``/``out.deleted``/``out.invalid``;
    hands known users not seen in the source to ``on_missing`` in chunks, to be confirmed."""
    missing: list[ScanRow] = []
    invalid = out.invalid
    by_int = kind is KeyKind.INT
    st: ScanRow | None = _next(state_rows)
    scanned = 0

    def lost(row: ScanRow) -> None:
        if not row.gone or row.dirty:
            missing.append(row)
            if len(missing) >= _VERIFY_CHUNK:
                on_missing(missing[:])
                missing.clear()
        elif row.row_hash is not None:
            out.purged.append(row.user_id)   # soft-deleted, then removed: forget its hash

    for src in source_rows:
        scanned += 1
        if not scanned % 50_000:
            ctx.progress()
        key = src.key
        if by_int and type(key) is int:
            skey: Any = key
        else:
            try:
                skey = normalize.user_id(key)
            except Invalid as exc:
                invalid.append((repr(key)[:64], str(exc)))
                continue
        # state rows before this key are missing from the source
        while st is not None:
            tkey: Any = st.key_int if by_int else st.user_id
            if tkey is None or type(tkey) is not type(skey) or tkey >= skey:
                break
            lost(st)
            st = _next(state_rows)
        matched = st if st is not None and (st.key_int if by_int else st.user_id) == skey \
            else None
        if matched is not None:
            st = _next(state_rows)
            if src.row_hash == matched.row_hash and not matched.dirty \
                    and src.row_hash is not None:
                continue
        out.take(ctx, src, matched)
    while st is not None:
        lost(st)
        st = _next(state_rows)
    if missing:
        on_missing(missing)
    out.scanned += scanned


# Users per key range when the databases compare ranges first.
BLOCK = 5000


class SnapshotCapture:
    name = "snapshot"

    def collect(self, ctx: CaptureContext) -> Candidates:
        out = Candidates(reconcile=True)
        ctx.progress()
        kind = ctx.source.key_kind()
        if kind is KeyKind.INT and self._by_ranges(ctx, out):
            return out
        merge(ctx.source.hash_scan(), ctx.state.ledger.scan(kind), kind, out, ctx,
              lambda rows: confirm_missing(ctx, rows, out))
        out.position = {"scanned": out.scanned}
        return out

    @staticmethod
    def _by_ranges(ctx: CaptureContext, out: Candidates) -> bool:
        """Integer keys on PostgreSQL/MySQL: both databases sum the row hashes per key range
        (about 5000 users each); only the ranges whose sums differ are merged row by row. An
        unchanged table costs two aggregate queries and no row crosses the wire."""
        if not ctx.source.sums_blocks() or ctx.state.ledger.unkeyed_users():
            return False
        bounds = ctx.state.ledger.boundaries(BLOCK)
        if not bounds:
            return False
        # Both databases sum at the same time: each waits on its own engine, not on Python.
        with ThreadPoolExecutor(1, thread_name_prefix="syncer-state-sums") as pool:
            ours_later = pool.submit(ctx.state.ledger.block_sums, bounds)
            try:
                source = ctx.source.block_sums(bounds)
            finally:
                state = ours_later.result()
        if source is None:
            return False
        ctx.beat()
        edges: list[int | None] = [None, *bounds, None]
        read = 0
        for i in range(len(edges) - 1):
            theirs, ours = source.get(i), state.get(i)
            if theirs is None and ours is None:
                continue
            if theirs is not None and ours is not None and ours[3] == 0 and theirs == ours[:3]:
                continue
            read += 1
            ctx.progress()
            low, high = edges[i], edges[i + 1]
            merge(ctx.source.hash_scan(low, high), ctx.state.ledger.scan_range(low, high),
                  KeyKind.INT, out, ctx, lambda rows: confirm_missing(ctx, rows, out))
        out.scanned = sum(n for n, _, _ in source.values())
        out.position = {"scanned": out.scanned, "key_ranges": len(edges) - 1,
                        "ranges_read_row_by_row": read}
        return True

    def position(self, ctx: CaptureContext) -> dict[str, object]:
        return {}

    def starts_with_snapshot(self, ctx: CaptureContext) -> bool:
        return True


def confirm_missing(ctx: CaptureContext, missing: list[ScanRow], out: Candidates) -> None:
    """Look the missing users up by key: the ones really gone are deletions, the others (an
    ordering difference, or a row inserted during the scan) are read again as changes."""
    keys = [ctx.source.typed_key(r.user_id, r.source_key) for r in missing]
    found = {normalize.user_id(row.key) for row in ctx.source.read(keys, values=False)}
    for row, key in zip(missing, keys, strict=True):
        if row.user_id in found:
            out.changed.append(key)
        else:
            out.absent.append(key)
            out.count_deletion(ctx, row)
