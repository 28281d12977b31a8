"""The first state schema: users, deliveries, quarantine, field problems, passes, cursors.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "syncer_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "syncer_users",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("key_int", sa.BigInteger, nullable=True),
        sa.Column("source_key", sa.Text, nullable=True),
        sa.Column("row_hash", sa.BigInteger, nullable=True),
        sa.Column("gone", sa.Boolean, nullable=False),
        sa.Column("dirty", sa.Boolean, nullable=False),
        sa.Column("first_seen", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_syncer_users_key_int", "syncer_users",
                    ["key_int", "user_id", "row_hash", "gone", "dirty"])
    op.create_index("ix_syncer_users_dirty", "syncer_users", ["dirty"],
                    sqlite_where=sa.text("dirty = 1"), postgresql_where=sa.text("dirty"))
    op.create_table(
        "syncer_deliveries",
        sa.Column("destination", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.LargeBinary(16), nullable=True),
        sa.Column("field_tags", sa.LargeBinary(256), nullable=True),
        sa.Column("deleted", sa.Boolean, nullable=False),
        sa.Column("delivered_at", sa.DateTime, nullable=False),
    )
    op.create_table(
        "syncer_quarantine",
        sa.Column("destination", sa.String(32), primary_key=True),
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.LargeBinary(16), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime, nullable=False),
        sa.Column("last_attempt", sa.DateTime, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
    )
    op.create_table(
        "syncer_problems",
        sa.Column("user_id", sa.Text, primary_key=True),
        sa.Column("field", sa.String(128), primary_key=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("since", sa.DateTime, nullable=False),
    )
    op.create_table(
        "syncer_passes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("counts", sa.Text, nullable=False),
        sa.Column("message", sa.Text, nullable=True),
        sa.Column("instance", sa.String(255), nullable=True),
    )
    op.create_index("ix_syncer_passes_started", "syncer_passes", ["started_at"])
    op.create_table(
        "syncer_cursors",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    for table in ("syncer_cursors", "syncer_passes", "syncer_problems", "syncer_quarantine",
                  "syncer_deliveries", "syncer_users", "syncer_meta"):
        op.drop_table(table)
