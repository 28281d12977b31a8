"""Alembic environment for the syncer state schema.

syncer runs the migrations itself (``syncer migrate``, and at every start) and hands this script an
open connection; it never reads an alembic.ini.
"""

from __future__ import annotations

from alembic import context

VERSION_TABLE = "syncer_alembic_version"

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
