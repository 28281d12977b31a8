"""Deletions only for users seen alive, re-created users, transient quarantines.

* ``syncer_users.seen_alive``: the source once gave this user alive. A deletion is sent (a Blux
  delete, a nachocode withdrawal) only for such a user: a key that shows up deleted or absent
  without ever having been seen alive is reported, never withdrawn.
* ``syncer_users.identity``: a keyed hash of ``[capture] created_column`` as last seen; when it
  changes, the key was reused by another person (deleted and re-created).
* ``syncer_quarantine.transient``: quarantined because the destination kept answering 5xx or
  timing out for this user alone; tried again by reconcile passes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("syncer_users") as batch:
        batch.add_column(sa.Column("seen_alive", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
        batch.add_column(sa.Column("identity", sa.BigInteger, nullable=True))
    # Users alive now, users something was delivered to, and deletions still in flight were
    # seen alive; users recorded as already deleted at the first pass were not.
    op.execute("UPDATE syncer_users SET seen_alive = (NOT gone OR dirty OR EXISTS ("
               "SELECT 1 FROM syncer_deliveries d WHERE d.user_id = syncer_users.user_id))")
    with op.batch_alter_table("syncer_quarantine") as batch:
        batch.add_column(sa.Column("transient", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("syncer_quarantine") as batch:
        batch.drop_column("transient")
    with op.batch_alter_table("syncer_users") as batch:
        batch.drop_column("identity")
        batch.drop_column("seen_alive")
