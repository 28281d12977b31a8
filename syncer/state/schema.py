"""The state tables, as SQLAlchemy Core objects for queries. The schema itself is created and
upgraded by the Alembic scripts in ``migrations/``; keep the two in step."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

meta = Table(
    "syncer_meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

users = Table(
    "syncer_users", metadata,
    Column("user_id", Text, primary_key=True),
    Column("key_int", BigInteger, nullable=True),
    Column("source_key", Text, nullable=True),
    Column("row_hash", BigInteger, nullable=True),
    Column("gone", Boolean, nullable=False),
    Column("dirty", Boolean, nullable=False),
    Column("first_seen", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("dirty_since", DateTime, nullable=True),   # 0002
    Column("seen_alive", Boolean, nullable=False),    # 0003: the source once gave it alive
    Column("identity", BigInteger, nullable=True),    # 0003: hash of [capture] created_column
    Column("recreating", Boolean, nullable=False),    # 0003: the previous person's deletion owed
)
Index("ix_syncer_users_key_int", users.c.key_int, users.c.user_id, users.c.row_hash,
      users.c.gone, users.c.dirty)
Index("ix_syncer_users_dirty", users.c.dirty,
      sqlite_where=text("dirty = 1"), postgresql_where=text("dirty"))

deliveries = Table(
    "syncer_deliveries", metadata,
    Column("destination", String(32), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("fingerprint", LargeBinary(16), nullable=True),
    Column("field_tags", LargeBinary(256), nullable=True),
    Column("deleted", Boolean, nullable=False),
    Column("delivered_at", DateTime, nullable=False),
)

quarantine = Table(
    "syncer_quarantine", metadata,
    Column("destination", String(32), primary_key=True),
    Column("user_id", Text, primary_key=True),
    Column("fingerprint", LargeBinary(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("since", DateTime, nullable=False),
    Column("last_attempt", DateTime, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("transient", Boolean, nullable=False),     # 0003: 5xx/timeouts for this user alone
)

problems = Table(
    "syncer_problems", metadata,
    Column("user_id", Text, primary_key=True),
    Column("field", String(128), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("since", DateTime, nullable=False),
)

passes = Table(
    "syncer_passes", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=True),
    Column("kind", String(16), nullable=False),
    Column("mode", String(16), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("counts", Text, nullable=False),
    Column("message", Text, nullable=True),
    Column("instance", String(255), nullable=True),
)

requests = Table(   # 0002: what `syncer retry`/`resync` ask of the running sender
    "syncer_requests", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("user_id", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
)

cursors = Table(
    "syncer_cursors", metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)

history = Table(   # 0005: the audit trail, append-only
    "syncer_history", metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True,
           autoincrement=True),
    Column("user_id", Text, nullable=False),
    Column("destination", String(32), nullable=False),
    Column("endpoint", String(32), nullable=False),
    Column("operation", String(16), nullable=False),
    Column("result", String(24), nullable=False),
    Column("fields", Text, nullable=True),       # names, comma-separated
    Column("consents", Text, nullable=True),     # name=true|false, comma-separated
    Column("whole", Boolean, nullable=False),    # every field (the user was new there)
    Column("pass_id", Integer, nullable=True),
    Column("sent_at", DateTime, nullable=True),
    Column("acked_at", DateTime, nullable=False),
    Column("committed_at", DateTime, nullable=True),
    Column("reason", Text, nullable=True),
)
Index("ix_syncer_history_user", history.c.user_id, history.c.id)
Index("ix_syncer_history_acked", history.c.acked_at)
