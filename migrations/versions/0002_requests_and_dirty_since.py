"""Operator requests for the sender, and since when a user has been waiting.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("syncer_users", sa.Column("dirty_since", sa.DateTime, nullable=True))
    op.execute("UPDATE syncer_users SET dirty_since = updated_at WHERE dirty")
    op.create_table(
        "syncer_requests",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("user_id", sa.Text, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("syncer_requests")
    with op.batch_alter_table("syncer_users") as batch:
        batch.drop_column("dirty_since")
