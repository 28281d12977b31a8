"""Pass counts as totals plus per-endpoint tables.

Earlier versions kept a pass's counts as one flat object whose keys packed the endpoint in after
a colon (``"pending:blux.update": 3``); they become ``{"totals": {...}, "pending":
{"blux.update": 3}, ...}``, the form :class:`syncer.results.PassCounts` reads.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PER_ENDPOINT = ("requests", "pending", "quarantined", "would")
_BATCH = 1000


def _nested(flat: dict[str, object]) -> dict[str, object]:
    out: dict[str, dict[str, object]] = {}
    sets: dict[str, list[str]] = {"credentials": [], "held": []}
    for key, value in flat.items():
        table, sep, name = key.partition(":")
        if not sep:
            out.setdefault("totals", {})[key] = value
        elif table in _PER_ENDPOINT:
            out.setdefault(table, {})[name] = value
        elif table == "problem":
            out.setdefault("problems", {})[name] = value
        elif table in sets and value:
            sets[table].append(name)
    nested: dict[str, object] = dict(out)
    nested.update({k: sorted(v) for k, v in sets.items() if v})
    return nested


def upgrade() -> None:
    conn = op.get_bind()
    passes = sa.table("syncer_passes", sa.column("id", sa.Integer),
                      sa.column("counts", sa.Text))
    last = 0
    while True:
        rows = conn.execute(sa.select(passes.c.id, passes.c.counts).where(passes.c.id > last)
                            .order_by(passes.c.id).limit(_BATCH)).all()
        if not rows:
            return
        for pass_id, text in rows:
            try:
                flat = json.loads(text or "{}")
            except ValueError:
                flat = {}
            if isinstance(flat, dict) and not any(isinstance(v, dict) for v in flat.values()):
                conn.execute(passes.update().where(passes.c.id == pass_id)
                             .values(counts=json.dumps(_nested(flat), sort_keys=True)))
        last = rows[-1][0]


def downgrade() -> None:
    """The nested form is not turned back: an older version reads it as no counts."""
