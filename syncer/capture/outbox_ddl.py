"""The outbox's table and triggers (``syncer outbox install | uninstall | sql``): the SQL for
PostgreSQL, MySQL/MariaDB and SQLite, running it, and reading back what is installed.

The triggers leave the key of every inserted, updated (in a watched column) or deleted row in the
outbox table, with what happened (``op``: I, U, D; the old key of a key change is a D), the
transaction it happened in (``txn``), and whether it is ``urgent`` (a consent or the soft-delete
column changed, or a deletion); a NULL key is left out, and nothing they do can make the app's own
write fail for a key it accepts. Installing
twice is harmless (it also upgrades an outbox of an earlier version), and the first pass after an
install is a full snapshot.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import structlog
from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from syncer.capture import outbox_tables as tables
from syncer.clock import utcnow
from syncer.config import CaptureConfig, Config, SourceConfig, is_column
from syncer.databases import create_source_engine, describe_error
from syncer.errors import ConfigError, SourceError
from syncer.mapping import CONSENTS, Mapping
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
    pk: str           # quoted key column
    watched: tuple[str, ...]  # quoted columns whose change matters
    schema: str | None = None  # unquoted schema of the outbox (None: the connection's default)
    consumer: str = ""         # the table naming the state that consumes the outbox, quoted
    consumer_bare: str = ""
    urgent: tuple[str, ...] = ()  # quoted columns whose change is urgent (consents, deletion)
    table_bare: str = ""          # the table's unquoted name
    primary: bool = True          # the users table (False: a table joined to it)

    def quoted_trigger(self, suffix: str, q: Callable[[str], str]) -> str:
        return q(f"{self.trigger}_{suffix}")


def names(source: Source, capture: CaptureConfig, schema: str | None,
          mapping: Mapping | None = None) -> OutboxNames:
    """The outbox, and the triggers on the users table (the first of ``[[source.tables]]``)."""
    return all_names(source, capture, schema, mapping)[0]


def all_names(source: Source, capture: CaptureConfig, schema: str | None,
              mapping: Mapping | None = None) -> list[OutboxNames]:
    """The outbox, and the triggers on every table of the source (see
    :mod:`syncer.capture.outbox_tables`); a query with no ``[[source.tables]]`` is refused."""
    config = source.config
    q = source.q
    prefix = f"{q(schema)}." if schema else ""
    outbox = capture.outbox_table
    base = OutboxNames(
        dialect=source.dialect, table="", outbox=prefix + q(outbox), outbox_bare=outbox,
        function=prefix + q(f"{outbox}_capture"), trigger="", pk="", watched=(), schema=schema,
        consumer=prefix + q(f"{outbox}_consumer"), consumer_bare=f"{outbox}_consumer")
    urgent = urgent_columns(capture, mapping)
    if config.table is not None:
        watched = [config.primary_key, *source.columns]
        if capture.soft_delete_column:
            watched += tables.named_columns(
                [capture.soft_delete_column],
                tables.table_columns(source, config.table, schema, "[source] table")
                if not is_column(capture.soft_delete_column) else [capture.soft_delete_column])
        watched = list(dict.fromkeys(watched))
        return [replace(base, table=prefix + q(config.table), table_bare=config.table,
                        trigger=f"{outbox}_on_{config.table}"[:50], pk=q(config.primary_key),
                        watched=tuple(q(c) for c in watched),
                        urgent=tuple(q(c) for c in tables.urgent_of(urgent, watched)))]
    if not config.tables:
        raise ConfigError('[capture] mode = "outbox" with [source] query: triggers go on '
                          "tables, so declare the tables the query reads and the column "
                          f"holding the user key in each: {tables.example()}")
    out = []
    for i, entry in enumerate(config.tables):
        columns = tables.table_columns(source, entry.name, schema,
                                       f"[[source.tables]] name (entry {i + 1})")
        if entry.key not in columns:
            raise ConfigError(f"[[source.tables]] key = {entry.key!r} (entry {i + 1}): table "
                              f"{entry.name!r} has no column {entry.key!r}")
        function = base.function if i == 0 else prefix + q(f"{outbox}_capture_{entry.name}"[:63])
        out.append(replace(
            base, table=prefix + q(entry.name), table_bare=entry.name, function=function,
            trigger=f"{outbox}_on_{entry.name}"[:50], pk=q(entry.key), primary=i == 0,
            watched=tuple(q(c) for c in tables.watched_of(source, capture, entry, columns)),
            urgent=tuple(q(c) for c in tables.urgent_of(urgent, columns))))
    return out


def urgent_columns(capture: CaptureConfig, mapping: Mapping | None) -> list[str]:
    """The columns whose change the trigger marks urgent: a consent (it may be withdrawn) and
    the soft-delete column (a deletion); a deleted row is always urgent."""
    columns = [col for name, col in (mapping.user_properties.items() if mapping else ())
               if name in CONSENTS]
    soft = capture.soft_delete_column
    if soft:
        columns += [soft] if is_column(soft) else _words(soft)
    return list(dict.fromkeys(columns))


def _words(expression: str) -> list[str]:
    return re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)


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


# The outbox's columns beside the key: what happened (I, U, D), in which transaction (a deletion
# and an insertion of one key in one transaction, such as MySQL's REPLACE, is the same person),
# and whether it is urgent (a consent or the soft-delete column changed, or a deletion).
OUTBOX_COLUMNS: Final = {
    "postgresql": {"op": "char(1) NOT NULL DEFAULT 'U'", "txn": "text",
                   "urgent": "smallint NOT NULL DEFAULT 0"},
    "mysql": {"op": "CHAR(1) NOT NULL DEFAULT 'U'", "txn": "VARCHAR(64)",
              "urgent": "SMALLINT NOT NULL DEFAULT 0"},
    "sqlite": {"op": "TEXT NOT NULL DEFAULT 'U'", "txn": "TEXT",
               "urgent": "INTEGER NOT NULL DEFAULT 0"},
}
_TXN: Final = {"postgresql": "txid_current()::text",
               "mysql": "CONCAT(CONNECTION_ID(), ':', NOW(6))", "sqlite": "NULL"}


def _family(dialect: str) -> str:
    return "mysql" if dialect in ("mysql", "mariadb") else dialect


def install_sql(ns: OutboxNames | Sequence[OutboxNames], q: Callable[[str], str],
                key_type: str = MYSQL_TEXT_KEY, missing: tuple[str, ...] = ()) -> list[str]:
    """The DDL: the outbox, then the triggers of every table (``ns``, the users table first);
    ``key_type`` is the MySQL/MariaDB type of ``user_key`` (see :func:`mysql_key_type`). A NULL
    key is left out: it cannot name a user. ``missing`` are the columns an outbox installed by
    an earlier version lacks (added first)."""
    first, *others = [ns] if isinstance(ns, OutboxNames) else list(ns)
    family = _family(first.dialect)
    build = {"postgresql": _postgres, "mysql": _mysql, "sqlite": _sqlite}[family]
    create, *triggers = build(first, q, key_type)
    upgrade = [f"ALTER TABLE {first.outbox} ADD COLUMN {col} {OUTBOX_COLUMNS[family][col]}"
               for col in missing]
    if family == "mysql":   # an outbox installed by an earlier version had VARCHAR(255)
        upgrade.insert(0, f"ALTER TABLE {first.outbox} MODIFY user_key {key_type} NOT NULL")
    consumer = (f"CREATE TABLE IF NOT EXISTS {first.consumer} (state_id VARCHAR(64) PRIMARY "
                "KEY)" + (" ENGINE=InnoDB" if family == "mysql" else ""))
    for n in others:
        triggers += build(n, q, key_type)[1:]
    return [create, *upgrade, consumer, *triggers]


def _create_table(n: OutboxNames, ident: str, key: str, created: str, tail: str = "") -> str:
    columns = OUTBOX_COLUMNS[_family(n.dialect)]
    extra = "".join(f",\n    {col} {ddl}" for col, ddl in columns.items())
    return (f"CREATE TABLE IF NOT EXISTS {n.outbox} (\n    {ident},\n    user_key {key},\n"
            f"    created_at {created}{extra}\n){tail}")


def _row(n: OutboxNames, key: str, op: str, urgent: str) -> str:
    """The INSERT of one outbox row for the key column ``key`` (``NEW.id``, ``OLD.id``); a NULL
    key is left out. In a joined table every row is a change of the user (``U``): whether the
    user is gone is what the query says."""
    family = _family(n.dialect)
    op = op if n.primary else "U"
    text = f"{key}::text" if family == "postgresql" else key
    values = f"{text}, '{op}', {_TXN[family]}, {urgent}"
    source = " FROM DUAL" if family == "mysql" else ""
    return (f"INSERT INTO {n.outbox} (user_key, op, txn, urgent) SELECT {values}{source} "
            f"WHERE {key} IS NOT NULL")


def _urgent(n: OutboxNames, differs: Callable[[str], str]) -> str:
    if not n.urgent:
        return "0"
    return f"CASE WHEN {' OR '.join(differs(c) for c in n.urgent)} THEN 1 ELSE 0 END"


def _postgres(n: OutboxNames, q: Callable[[str], str], key_type: str) -> list[str]:
    changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in n.watched)
    urgent = _urgent(n, lambda c: f"OLD.{c} IS DISTINCT FROM NEW.{c}")
    body = f"""
BEGIN
    IF TG_OP = 'DELETE' THEN
        {_row(n, f"OLD.{n.pk}", "D", "1")};
    ELSIF TG_OP = 'INSERT' THEN
        {_row(n, f"NEW.{n.pk}", "I", "0")};
    ELSE
        {_row(n, f"NEW.{n.pk}", "U", urgent)};
        IF NEW.{n.pk} IS DISTINCT FROM OLD.{n.pk} THEN
            {_row(n, f"OLD.{n.pk}", "D", "1")};
        END IF;
    END IF;
    RETURN NULL;
END
"""
    return [
        _create_table(n, "id bigserial PRIMARY KEY", "text NOT NULL",
                      "timestamptz NOT NULL DEFAULT now()"),
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


def _mysql(n: OutboxNames, q: Callable[[str], str], key_type: str) -> list[str]:
    # BINARY: a case-only change must count even under a case-insensitive collation.
    same = " AND ".join(f"BINARY OLD.{c} <=> BINARY NEW.{c}" for c in n.watched)
    urgent = _urgent(n, lambda c: f"NOT (BINARY OLD.{c} <=> BINARY NEW.{c})")
    return [
        _create_table(n, "id BIGINT AUTO_INCREMENT PRIMARY KEY", f"{key_type} NOT NULL",
                      "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)", " ENGINE=InnoDB"),
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('ins', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('ins', q)} AFTER INSERT ON {n.table} FOR EACH ROW "
        + _row(n, f"NEW.{n.pk}", "I", "0"),
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('upd', q)}",
        f"""CREATE TRIGGER {n.quoted_trigger('upd', q)} AFTER UPDATE ON {n.table} FOR EACH ROW
BEGIN
    IF NOT ({same}) THEN
        {_row(n, f"NEW.{n.pk}", "U", urgent)};
        IF NOT (BINARY OLD.{n.pk} <=> BINARY NEW.{n.pk}) THEN
            {_row(n, f"OLD.{n.pk}", "D", "1")};
        END IF;
    END IF;
END""",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('del', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('del', q)} AFTER DELETE ON {n.table} FOR EACH ROW "
        + _row(n, f"OLD.{n.pk}", "D", "1"),
    ]


def _sqlite(n: OutboxNames, q: Callable[[str], str], key_type: str) -> list[str]:
    same = " AND ".join(f"OLD.{c} IS NEW.{c}" for c in n.watched)
    urgent = _urgent(n, lambda c: f"OLD.{c} IS NOT NEW.{c}")
    return [
        _create_table(n, "id INTEGER PRIMARY KEY AUTOINCREMENT", "TEXT NOT NULL",
                      "TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"),
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('ins', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('ins', q)} AFTER INSERT ON {n.table} BEGIN "
        f"{_row(n, f'NEW.{n.pk}', 'I', '0')}; END",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('upd', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('upd', q)} AFTER UPDATE OF {', '.join(n.watched)} "
        f"ON {n.table} WHEN NOT ({same}) BEGIN "
        f"{_row(n, f'NEW.{n.pk}', 'U', urgent)}; "
        f"{_row(n, f'OLD.{n.pk}', 'D', '1')} AND OLD.{n.pk} IS NOT NEW.{n.pk}; END",
        f"DROP TRIGGER IF EXISTS {n.quoted_trigger('del', q)}",
        f"CREATE TRIGGER {n.quoted_trigger('del', q)} AFTER DELETE ON {n.table} BEGIN "
        f"{_row(n, f'OLD.{n.pk}', 'D', '1')}; END",
    ]


def uninstall_sql(ns: OutboxNames | Sequence[OutboxNames], q: Callable[[str], str]
                  ) -> list[str]:
    """Drop every table's triggers (and PostgreSQL functions), then the outbox."""
    listed = [ns] if isinstance(ns, OutboxNames) else list(ns)
    drops = []
    for n in listed:
        for suffix in ("ins", "upd", "del"):
            trigger = n.quoted_trigger(suffix, q)
            drops.append(f"DROP TRIGGER IF EXISTS {trigger} ON {n.table}"
                         if n.dialect == "postgresql" else f"DROP TRIGGER IF EXISTS {trigger}")
    if listed[0].dialect == "postgresql":
        drops += [f"DROP FUNCTION IF EXISTS {f}()" for f in dict.fromkeys(n.function
                                                                        for n in listed)]
    drops.append(f"DROP TABLE IF EXISTS {listed[0].outbox}")
    drops.append(f"DROP TABLE IF EXISTS {listed[0].consumer}")
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
    schema = schema_of(source, config.source)
    if not uninstall and config.source.table:
        tables.refuse_view(source, config.source.table, schema, "[source] table")
    ns = all_names(source, config.capture, schema, Mapping.for_config(config, bytes(16)))
    n = ns[0]
    if uninstall:
        return source, uninstall_sql(ns, source.q)
    key_type = MYSQL_TEXT_KEY
    if n.dialect in ("mysql", "mariadb"):
        key_type = mysql_key_type(_mysql_data_type(source, n))
    columns = outbox_columns(source, n)
    missing = tuple(c for c in OUTBOX_COLUMNS[_family(n.dialect)]
                    if columns is not None and c not in columns)
    return source, install_sql(ns, source.q, key_type, missing)


def outbox_columns(source: Source, n: OutboxNames) -> set[str] | None:
    """The outbox table's columns, or None when it does not exist (yet).

    :raises SourceError: the database could not be asked."""
    try:
        with source.connect() as conn:
            insp = inspect(conn)
            if not insp.has_table(n.outbox_bare, schema=n.schema):
                return None
            return {str(c["name"]) for c in insp.get_columns(n.outbox_bare, schema=n.schema)}
    except SQLAlchemyError as exc:
        raise SourceError(f"cannot read the outbox table {n.outbox_bare}: "
                          f"{describe_error(exc)}") from exc


def _mysql_data_type(source: Source, n: OutboxNames) -> str | None:
    """The users table's key column's type, or None when it cannot be read (the table is not
    there yet)."""
    try:
        rows = source.run(
            "SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
            "COALESCE(:schema, DATABASE()) AND TABLE_NAME = :table AND COLUMN_NAME = :column",
            {"schema": n.schema, "table": n.table_bare, "column": n.pk.strip("`")})
    except SourceError:
        return None
    return str(rows[0][0]) if rows else None


def sql(config: Config, *, uninstall: bool = False) -> str:
    """The DDL, for a DBA who will run it instead of syncer."""
    source, statements = _statements(config, uninstall)
    source.close()
    terminator = "\n;\n" if source.dialect != "postgresql" else ";\n\n"
    head = ("-- syncer outbox for " + on_tables(config) +
            (" (MySQL: run with DELIMITER set to something other than ;)"
             if source.dialect in ("mysql", "mariadb") else "") + "\n")
    return head + terminator.join(statements) + terminator.rstrip("\n")


def on_tables(config: Config) -> str:
    """The tables that hold (or would hold) the triggers, for messages."""
    return config.source.table or ", ".join(t.name for t in config.source.tables)


def install(config: Config) -> str:
    source, statements = _statements(config, uninstall=False)
    try:
        source.check()
        _execute(source, statements)
    finally:
        source.close()
    _forget_position(config)
    return (f"outbox table {config.capture.outbox_table} and triggers installed on "
            f"{on_tables(config)}; the next pass is a full snapshot, then only changes")


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


def consumers(source: Source, n: OutboxNames) -> set[str] | None:
    """The states that took rows out of this outbox (each records its id when it does); None
    when the outbox predates that record (``syncer outbox install`` again adds it).

    :raises SourceError: the database failed."""
    if outbox_columns(source, replace(n, outbox=n.consumer, outbox_bare=n.consumer_bare)) is None:
        return None
    return {str(r[0]) for r in source.run(f"SELECT state_id FROM {n.consumer}")}


def claim(source: Source, n: OutboxNames, state_id: str) -> None:
    """Record that the state ``state_id`` takes rows out of this outbox (a new, empty state is
    then refused: it would send every user again). Nothing happens for an outbox of an earlier
    version, which has no such record."""
    try:
        source.run(f"DELETE FROM {n.consumer} WHERE state_id <> :id", {"id": state_id})
        mysql = _family(n.dialect) == "mysql"
        value = "CAST(:id AS CHAR(64))" if mysql else "CAST(:id AS VARCHAR(64))"
        dual = " FROM DUAL" if mysql else ""
        source.run(f"INSERT INTO {n.consumer} (state_id) SELECT {value}{dual} WHERE NOT EXISTS "
                   f"(SELECT 1 FROM {n.consumer} WHERE state_id = :id)", {"id": state_id})
    except SourceError as exc:   # an outbox of an earlier version, or no right to write there
        log.warning("outbox.claim_failed", error=str(exc)[:200],
                    hint="run `syncer outbox install` again, or GRANT INSERT, DELETE on the "
                         "outbox's _consumer table to the reader")
