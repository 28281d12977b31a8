"""The outbox's table and triggers (``syncer outbox install | uninstall | sql``): the SQL for
PostgreSQL, MySQL/MariaDB and SQLite, running it, and reading back what is installed.

The triggers leave the key of every inserted, updated (in a watched column) or deleted row in the
outbox table, with ``deleted`` set for a deletion (or the old key of a key change); a NULL key is
left out, and nothing they do can make the app's own write fail for a key it accepts. Installing
twice is harmless (it also upgrades an outbox of an earlier version), and the first pass after an
install is a full snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import structlog
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from syncer.clock import utcnow
from syncer.config import CaptureConfig, Config, SourceConfig
from syncer.databases import create_source_engine, describe_error
from syncer.errors import ConfigError, SourceError
from syncer.mapping import Mapping
from syncer.source import Source

log = structlog.get_logger("syncer.capture.outbox")

CURSOR = "outbox"


@dataclass(frozen=True, slots=True)
class OutboxNames:
    dialect: str
    table: str        # the users table, qualified and quoted
    outbox: str       # the outbox table, qualified and quoted
    outbox_bare: str  # unquoted name
    function: str     # PostgreSQL trigger function, qualified and quoted
    trigger: str      # trigger name prefix (unquoted)
    channel: str      # PostgreSQL NOTIFY channel
    pk: str           # quoted key column
    watched: tuple[str, ...]  # quoted columns whose change matters
    schema: str | None = None  # unquoted schema of the outbox (None: the connection's default)

    def quoted_trigger(self, suffix: str, q: Callable[[str], str]) -> str:
        return q(f"{self.trigger}_{suffix}")


def names(source: Source, capture: CaptureConfig, schema: str | None) -> OutboxNames:
    if source.config.table is None:
        raise ConfigError('[capture] mode = "outbox" needs [source] table (triggers go on a '
                          "table, not on a query)")
    q = source.q
    prefix = f"{q(schema)}." if schema else ""
    watched = [source.config.primary_key, *source.columns]
    if capture.soft_delete_column:
        watched.append(capture.soft_delete_column)
    outbox = capture.outbox_table
    return OutboxNames(
        dialect=source.dialect,
        table=prefix + q(source.config.table),
        outbox=prefix + q(outbox),
        outbox_bare=outbox,
        function=prefix + q(f"{outbox}_capture"),
        trigger=f"{outbox}_on_{source.config.table}"[:50],
        channel=channel_name(capture.outbox_table),
        pk=q(source.config.primary_key),
        watched=tuple(q(c) for c in dict.fromkeys(watched)),
        schema=schema,
    )


def channel_name(outbox_table: str) -> str:
    return outbox_table.lower()[:63]


# ----------------------------------------------------------------------------- DDL


def dollar_quote(body: str) -> str:
    """``body`` as a PostgreSQL dollar-quoted string, with a tag that does not occur in it (the
    body holds names from the database, such as the schema, which may contain ``$``)."""
    tag, n = "$syncer$", 0
    while tag in body:
        n += 1
        tag = f"$syncer_{n}$"
    return f"{tag}{body}{tag}"


# MySQL/MariaDB key types whose values read as text in any character set; any other key (binary
# strings, BIT, spatial types) is kept as bytes, which every value converts to.
_MYSQL_TEXTUAL = frozenset({
    "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json",
    "tinyint", "smallint", "mediumint", "int", "integer", "bigint", "decimal", "numeric", "float",
    "double", "real", "year", "date", "time", "datetime", "timestamp", "uuid", "inet4", "inet6",
})
MYSQL_TEXT_KEY: Final = "LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"


def mysql_key_type(data_type: str | None) -> str:
    """The outbox's ``user_key`` type for a key column of this type (``information_schema``'s
    ``DATA_TYPE``): one that holds any value of it, whatever its length or character set, so
    that the trigger can never fail the application's write."""
    if data_type is None or data_type.lower() in _MYSQL_TEXTUAL:
        return MYSQL_TEXT_KEY
    return "LONGBLOB"


def install_sql(n: OutboxNames, q: Callable[[str], str],
                key_type: str = MYSQL_TEXT_KEY, add_deleted: bool = False) -> list[str]:
    """The DDL; ``key_type`` is the MySQL/MariaDB type of ``user_key`` (see
    :func:`mysql_key_type`). A NULL key is left out: it cannot name a user. ``deleted`` marks
    the rows left by a deletion (or by the old key of a key change), so that a key deleted and
    re-created between two passes is known to be another person; ``add_deleted`` adds that
    column to an outbox installed by an earlier version."""
    upgrade = ([f"ALTER TABLE {n.outbox} ADD COLUMN deleted SMALLINT NOT NULL DEFAULT 0"]
               if add_deleted else [])
    create, *rest = _install_sql(n, q, key_type)
    return [create, *upgrade, *rest]


def _install_sql(n: OutboxNames, q: Callable[[str], str], key_type: str) -> list[str]:
    if n.dialect == "postgresql":
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in n.watched)
        body = f"""
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.{n.pk} IS NOT NULL THEN
            INSERT INTO {n.outbox} (user_key, deleted) VALUES (OLD.{n.pk}::text, 1);
        END IF;
    ELSE
        IF NEW.{n.pk} IS NOT NULL THEN
            INSERT INTO {n.outbox} (user_key) VALUES (NEW.{n.pk}::text);
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.{n.pk} IS DISTINCT FROM OLD.{n.pk}
                AND OLD.{n.pk} IS NOT NULL THEN
            INSERT INTO {n.outbox} (user_key, deleted) VALUES (OLD.{n.pk}::text, 1);
        END IF;
    END IF;
    PERFORM pg_notify('{n.channel}', '');
    RETURN NULL;
END
"""
        return [
            f"""CREATE TABLE IF NOT EXISTS {n.outbox} (
    id bigserial PRIMARY KEY,
    user_key text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    deleted smallint NOT NULL DEFAULT 0
)""",
            f"""CREATE OR REPLACE FUNCTION {n.function}() RETURNS trigger
LANGUAGE plpgsql AS {dollar_quote(body)}""",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('ins', q)} ON {n.table}",
            f"CREATE TRIGGER {n.quoted_trigger('ins', q)} AFTER INSERT ON {n.table} "
            f"FOR EACH ROW EXECUTE FUNCTION {n.function}()",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('upd', q)} ON {n.table}",
            f"CREATE TRIGGER {n.quoted_trigger('upd', q)} AFTER UPDATE OF "
            f"{', '.join(n.watched)} ON {n.table} FOR EACH ROW WHEN ({changed}) "
            f"EXECUTE FUNCTION {n.function}()",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('del', q)} ON {n.table}",
            f"CREATE TRIGGER {n.quoted_trigger('del', q)} AFTER DELETE ON {n.table} "
            f"FOR EACH ROW EXECUTE FUNCTION {n.function}()",
        ]
    if n.dialect in ("mysql", "mariadb"):
        # BINARY: a case-only change must count even under a case-insensitive collation.
        same = " AND ".join(f"BINARY OLD.{c} <=> BINARY NEW.{c}" for c in n.watched)
        return [
            f"""CREATE TABLE IF NOT EXISTS {n.outbox} (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    user_key {key_type} NOT NULL,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
    deleted SMALLINT NOT NULL DEFAULT 0
) ENGINE=InnoDB""",
            # an outbox installed by an earlier version had VARCHAR(255)
            f"ALTER TABLE {n.outbox} MODIFY user_key {key_type} NOT NULL",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('ins', q)}",
            f"CREATE TRIGGER {n.quoted_trigger('ins', q)} AFTER INSERT ON {n.table} FOR EACH ROW "
            f"INSERT INTO {n.outbox} (user_key) SELECT NEW.{n.pk} FROM DUAL "
            f"WHERE NEW.{n.pk} IS NOT NULL",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('upd', q)}",
            f"""CREATE TRIGGER {n.quoted_trigger('upd', q)} AFTER UPDATE ON {n.table} FOR EACH ROW
BEGIN
    IF NOT ({same}) THEN
        IF NEW.{n.pk} IS NOT NULL THEN
            INSERT INTO {n.outbox} (user_key) VALUES (NEW.{n.pk});
        END IF;
        IF NOT (BINARY OLD.{n.pk} <=> BINARY NEW.{n.pk}) AND OLD.{n.pk} IS NOT NULL THEN
            INSERT INTO {n.outbox} (user_key, deleted) VALUES (OLD.{n.pk}, 1);
        END IF;
    END IF;
END""",
            f"DROP TRIGGER IF EXISTS {n.quoted_trigger('del', q)}",
            f"CREATE TRIGGER {n.quoted_trigger('del', q)} AFTER DELETE ON {n.table} FOR EACH ROW "
            f"INSERT INTO {n.outbox} (user_key, deleted) SELECT OLD.{n.pk}, 1 FROM DUAL "
            f"WHERE OLD.{n.pk} IS NOT NULL",
        ]
    same = " AND ".join(f"OLD.{c} IS NEW.{c}" for c in n.watched)
    return [
        f"""CREATE TABLE IF NOT EXISTS {n.outbox} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_key TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    deleted INTEGER NOT NULL DEFAULT 0
)""",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('ins', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('ins', q)} AFTER INSERT ON {n.table} BEGIN "
        f"INSERT INTO {n.outbox} (user_key) SELECT NEW.{n.pk} WHERE NEW.{n.pk} IS NOT NULL; END",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('upd', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('upd', q)} AFTER UPDATE OF {', '.join(n.watched)} "
        f"ON {n.table} WHEN NOT ({same}) BEGIN "
        f"INSERT INTO {n.outbox} (user_key) SELECT NEW.{n.pk} WHERE NEW.{n.pk} IS NOT NULL; "
        f"INSERT INTO {n.outbox} (user_key, deleted) SELECT OLD.{n.pk}, 1 "
        f"WHERE OLD.{n.pk} IS NOT NEW.{n.pk} AND OLD.{n.pk} IS NOT NULL; END",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('del', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('del', q)} AFTER DELETE ON {n.table} BEGIN "
        f"INSERT INTO {n.outbox} (user_key, deleted) SELECT OLD.{n.pk}, 1 "
        f"WHERE OLD.{n.pk} IS NOT NULL; END",
    ]


def uninstall_sql(n: OutboxNames, q: Callable[[str], str]) -> list[str]:
    drops = []
    for suffix in ("ins", "upd", "del"):
        trigger = n.quoted_trigger(suffix, q)
        drops.append(f"DROP TRIGGER IF EXISTS {trigger} ON {n.table}" if n.dialect == "postgresql"
                     else f"DROP TRIGGER IF EXISTS {trigger}")
    if n.dialect == "postgresql":
        drops.append(f"DROP FUNCTION IF EXISTS {n.function}()")
    drops.append(f"DROP TABLE IF EXISTS {n.outbox}")
    return drops


# ----------------------------------------------------------------------------- commands


def _source_for(config: Config) -> Source:
    mapping = Mapping.for_config(config, bytes(16))  # only its columns are needed here
    return Source(config.source, config.capture, mapping.columns, 0,
                  engine=create_source_engine(config.source.url))


def schema_of(source: Source, config: SourceConfig) -> str | None:
    """Qualify everything: a trigger runs under the application's search path, not ours."""
    if config.schema_:
        return config.schema_
    if source.dialect == "postgresql":
        return str(source.scalar("SELECT current_schema()"))
    return None


def _statements(config: Config, uninstall: bool) -> tuple[Source, list[str]]:
    source = _source_for(config)
    n = names(source, config.capture, schema_of(source, config.source))
    if uninstall:
        return source, uninstall_sql(n, source.q)
    key_type = MYSQL_TEXT_KEY
    if n.dialect in ("mysql", "mariadb"):
        key_type = mysql_key_type(_mysql_data_type(source, config.source))
    columns = outbox_columns(source, n)
    return source, install_sql(n, source.q, key_type,
                               add_deleted=columns is not None and "deleted" not in columns)


def outbox_columns(source: Source, n: OutboxNames) -> set[str] | None:
    """The outbox table's columns, or None when it does not exist (yet)."""
    try:
        with source.connect() as conn:
            insp = inspect(conn)
            if not insp.has_table(n.outbox_bare, schema=n.schema):
                return None
            return {str(c["name"]) for c in insp.get_columns(n.outbox_bare, schema=n.schema)}
    except SQLAlchemyError:
        return None


def _mysql_data_type(source: Source, config: SourceConfig) -> str | None:
    """The key column's type, or None when it cannot be read (the table is not there yet)."""
    try:
        rows = source.run(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table AND COLUMN_NAME = :column",
            {"schema": config.schema_, "table": config.table, "column": config.primary_key})
    except SourceError:
        return None
    return str(rows[0][0]) if rows else None


def sql(config: Config, *, uninstall: bool = False) -> str:
    """The DDL, for a DBA who will run it instead of syncer."""
    source, statements = _statements(config, uninstall)
    source.close()
    terminator = "\n;\n" if source.dialect != "postgresql" else ";\n\n"
    head = ("-- syncer outbox for " + (config.source.table or "") +
            (" (MySQL: run with DELIMITER set to something other than ;)"
             if source.dialect in ("mysql", "mariadb") else "") + "\n")
    return head + terminator.join(statements) + terminator.rstrip("\n")


def install(config: Config) -> str:
    source, statements = _statements(config, uninstall=False)
    try:
        source.check()
        _execute(source, statements)
    finally:
        source.close()
    _forget_position(config)
    return (f"outbox table {config.capture.outbox_table} and triggers installed on "
            f"{config.source.table}; the next pass is a full snapshot, then only changes")


def uninstall(config: Config) -> str:
    source, statements = _statements(config, uninstall=True)
    try:
        _execute(source, statements)
    finally:
        source.close()
    _forget_position(config)
    return f"outbox table {config.capture.outbox_table} and its triggers removed"


def _execute(source: Source, statements: list[str]) -> None:
    try:
        with source.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    except Exception as exc:
        raise SourceError(f"cannot change {source.description}: {describe_error(exc)} (the "
                          "reader may lack the rights: `syncer outbox sql` prints the SQL for a "
                          "DBA)") from exc


def _forget_position(config: Config) -> None:
    """After (re)installing, the first pass is a snapshot: changes made while the triggers were
    being replaced are not lost."""
    from syncer.state.sql import SqlStateStore

    store = SqlStateStore.from_url(config.state.url)
    try:
        store.cursors.set(CURSOR, None, utcnow())
    finally:
        store.close()


def consumed(source: Source, n: OutboxNames) -> bool | None:
    """Whether rows were taken out of the outbox: ids were handed out below the lowest id left,
    or the table is empty though its id counter moved. syncer is the outbox's only consumer, so
    a state took them. None when the database does not say (no right to read the sequence, no
    such table)."""
    try:
        lowest = source.scalar(f"SELECT min(id) FROM {n.outbox}")
        if n.dialect == "postgresql":
            rows = source.run(
                "SELECT s.start_value, s.last_value, "
                "has_sequence_privilege(c.oid, 'SELECT, USAGE') "
                "FROM pg_class c JOIN pg_namespace ns ON ns.oid = c.relnamespace "
                "JOIN pg_sequences s ON s.schemaname = ns.nspname AND s.sequencename = c.relname "
                "WHERE c.oid = pg_get_serial_sequence(:t, 'id')::regclass", {"t": n.outbox})
            if not rows or not rows[0][2]:
                return None
            first, used = int(rows[0][0]), rows[0][1] is not None
        elif n.dialect in ("mysql", "mariadb"):
            # SHOW CREATE TABLE gives the live counter (MySQL 8 caches information_schema's);
            # it leaves AUTO_INCREMENT= out while the counter has not moved.
            definition = str(source.run(f"SHOW CREATE TABLE {n.outbox}")[0][1])
            found = re.search(r"AUTO_INCREMENT=(\d+)", definition)
            first = int(source.scalar("SELECT @@auto_increment_increment") or 1)
            used = found is not None and int(found.group(1)) > 1
        else:
            seq = source.scalar("SELECT seq FROM sqlite_sequence WHERE name = :t",
                                {"t": n.outbox_bare})
            first, used = 1, bool(seq)
    except SourceError as exc:
        log.debug("outbox.sequence_unknown", error=str(exc)[:200])
        return None
    if lowest is None:
        return used
    return int(lowest) > first


def watched_drift(source: Source, n: OutboxNames) -> list[str]:
    """Mapped columns the installed update trigger does not watch (the mapping changed)."""
    trigger = f"{n.trigger}_upd"
    try:
        if n.dialect == "postgresql":
            rows = source.run("SELECT pg_get_triggerdef(oid) FROM pg_trigger WHERE tgname = :t",
                              {"t": trigger})
        elif n.dialect in ("mysql", "mariadb"):
            rows = source.run("SELECT ACTION_STATEMENT FROM information_schema.TRIGGERS "
                              "WHERE TRIGGER_SCHEMA = DATABASE() AND TRIGGER_NAME = :t",
                              {"t": trigger})
        else:
            rows = source.run("SELECT sql FROM sqlite_master WHERE type = 'trigger' "
                              "AND name = :t", {"t": trigger})
    except SourceError:
        return []
    if not rows:
        return ["(no update trigger found)"]
    definition = str(rows[0][0])
    return [c for c in n.watched if c not in definition and c.strip('"`') not in definition]
