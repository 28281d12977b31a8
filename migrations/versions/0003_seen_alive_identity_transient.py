"""Deletions only for users seen alive, re-created users, transient quarantines.

* ``syncer_users.seen_alive``: the source once gave this user alive. A deletion is sent (a Blux
  delete, a nachocode withdrawal) only for such a user: a key that shows up deleted or absent
  without ever having been seen alive is reported, never withdrawn.
* ``syncer_users.identity``: a hash of ``[capture] created_column`` as last seen; when it
  changes, the key was reused by another person (deleted and re-created).
* ``syncer_users.recreating``: the previous person of a re-created key is still owed its
  deletion somewhere; the new person is sent once it is done.
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
        batch.add_column(sa.Column("recreating", sa.Boolean, nullable=False,
                                   server_default=sa.false()))
    # Users alive now, users something was delivered to, and deletions still in flight were
    # seen alive; users recorded as already deleted at the first pass were not.
    # (IN, not a correlated EXISTS: the deliveries' key starts with the destination, and SQLite
    # would look every user up in a scan.)
    op.execute("UPDATE syncer_users SET seen_alive = (NOT gone OR dirty OR user_id IN ("
               "SELECT user_id FROM syncer_deliveries))")
    with op.batch_alter_table("syncer_quarantine") as batch:
        batch.add_column(sa.Column("transient", sa.Boolean, nullable=False,
                                   server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("syncer_quarantine") as batch:
        batch.drop_column("transient")
    with op.batch_alter_table("syncer_users") as batch:
        batch.drop_column("recreating")
        batch.drop_column("identity")
        batch.drop_column("seen_alive")
