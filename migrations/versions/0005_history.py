"""The audit trail: ``syncer_history``, one row per operation a destination acknowledged or
refused (append-only; pruned after ``[state] history_days``).

Field names only, never their values, except the consents' new values (``consents``:
``marketing_notification_consent=false,...``). ``committed_at`` is the change's commit where the
capture knows it (the outbox row's time, the watermark value).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "syncer_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
                  autoincrement=True),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("destination", sa.String(32), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("result", sa.String(24), nullable=False),
        sa.Column("fields", sa.Text, nullable=True),
        sa.Column("consents", sa.Text, nullable=True),
        sa.Column("whole", sa.Boolean, nullable=False),
        sa.Column("pass_id", sa.Integer, nullable=True),
        sa.Column("sent_at", sa.DateTime, nullable=True),
        sa.Column("acked_at", sa.DateTime, nullable=False),
        sa.Column("committed_at", sa.DateTime, nullable=True),
        sa.Column("reason", sa.Text, nullable=True),
    )
    op.create_index("ix_syncer_history_user", "syncer_history", ["user_id", "id"])
    op.create_index("ix_syncer_history_acked", "syncer_history", ["acked_at"])


def downgrade() -> None:
    op.drop_table("syncer_history")
