"""Which tables the outbox triggers go on, and whether they are all there.

A ``[source] table`` is one table: its key and mapped columns are watched. A ``[source] query``
reads several tables, declared as ``[[source.tables]]`` (``name``, ``key``): each gets its own
triggers, writing the user's key from its ``key`` column. The first entry is the users table
itself (a deletion there is marked ``D``, and a deletion then an insertion of one key is another
person); in the others (joined tables) every insert, update and delete is a change (``U``) of
the user: whether the user still exists is what the query says when the pass reads it. Which
columns of a table matter is read from the query: the columns it names (all of them when it
selects ``*``). A view cannot hold triggers; it is refused, with the ``[[source.tables]]`` to
write instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.exc import SQLAlchemyError

from syncer.config import CaptureConfig, SourceTable, is_column
from syncer.databases import describe_error
from syncer.errors import ConfigError, SourceError
from syncer.source import Source

if TYPE_CHECKING:
    from syncer.capture.outbox_ddl import OutboxNames

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STAR = re.compile(r"(?:\.|\bselect\s+(?:distinct\s+)?)\s*\*", re.IGNORECASE)

SUFFIXES = {"ins": "insert", "upd": "update", "del": "delete"}


def example(relation: str = "users") -> str:
    """How to declare a query and its tables, for messages."""
    return (f'[source] query = "SELECT u.id, ... FROM {relation} u LEFT JOIN profile p ON '
            'p.user_id = u.id", then one [[source.tables]] per table it reads: '
            f'name = "{relation}", key = "id"; name = "profile", key = "user_id"')


def refuse_view(source: Source, table: str, schema: str | None, owner: str) -> None:
    """A view cannot hold the triggers: say so, and what to write instead.

    :raises ConfigError: ``table`` is a view."""
    try:
        with source.connect() as conn:
            views = inspect(conn).get_view_names(schema=schema)
    except SQLAlchemyError as exc:
        raise SourceError(f"cannot read the views of {source.description}: "
                          f"{describe_error(exc)}") from exc
    if table in views:
        raise ConfigError(
            f"{owner} = {table!r} is a view: triggers go on the tables under it, not on a view "
            "(no trigger SQL is printed for it). Give the view's SELECT as the source and "
            f"declare the tables it reads, e.g. {example()}")


def table_columns(source: Source, table: str, schema: str | None, owner: str) -> list[str]:
    """The columns of a real table (not a view), in order.

    :raises ConfigError: no such table, or a view (triggers go on the tables under it).
    :raises SourceError: the database could not be asked."""
    refuse_view(source, table, schema, owner)
    try:
        with source.connect() as conn:
            insp = inspect(conn)
            if not insp.has_table(table, schema=schema):
                raise ConfigError(f"{owner} = {table!r}: no such table in "
                                  f"{source.description}")
            return [str(c["name"]) for c in insp.get_columns(table, schema=schema)]
    except SQLAlchemyError as exc:
        raise SourceError(f"cannot read the columns of {table}: {describe_error(exc)}") from exc


def named_columns(texts: list[str], columns: list[str]) -> list[str]:
    """The columns of a table that the query (and an expression) name: a word equal to the
    column's name, in any case. A query selecting ``*`` names them all."""
    if any(_STAR.search(t) for t in texts):
        return list(columns)
    words = {w.lower() for t in texts for w in _WORD.findall(t)}
    return [c for c in columns if c.lower() in words]


def texts_of(source: Source, capture: CaptureConfig) -> list[str]:
    """The SQL that says which columns matter: the query and a soft-delete expression."""
    texts = [source.config.query or ""]
    soft = capture.soft_delete_column
    if soft and not is_column(soft):
        texts.append(soft)
    return texts


def watched_of(source: Source, capture: CaptureConfig, entry: SourceTable,
               columns: list[str]) -> list[str]:
    """An entry's watched columns: its key first, then the columns the query names."""
    named = named_columns(texts_of(source, capture), columns)
    return list(dict.fromkeys([entry.key, *named]))


def urgent_of(wanted: list[str], columns: list[str]) -> list[str]:
    """The urgent columns (consents, the soft-delete column, by name) this table holds."""
    lowered = {c.lower(): c for c in columns}
    return [lowered[w.lower()] for w in wanted if w.lower() in lowered]


def trigger_problems(source: Source, n: OutboxNames) -> list[str]:
    """What is wrong with one table's triggers: a trigger missing, or an update trigger that
    does not watch a column that matters (the mapping or the query changed). Empty: healthy."""
    bare = n.table_bare
    try:
        if n.dialect == "postgresql":
            rows = source.run("SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE "
                              "tgrelid = CAST(:rel AS regclass) AND NOT tgisinternal",
                              {"rel": n.table})
        elif n.dialect in ("mysql", "mariadb"):
            rows = source.run("SELECT TRIGGER_NAME, ACTION_STATEMENT FROM "
                              "information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = "
                              "COALESCE(:schema, DATABASE()) AND EVENT_OBJECT_TABLE = :t",
                              {"t": bare, "schema": n.schema})
        else:
            rows = source.run("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                              "AND tbl_name = :t", {"t": bare})
    except SourceError:
        return []
    found = {str(name): str(definition) for name, definition in rows}
    problems = [f"{bare}: no {what} trigger" for suffix, what in SUFFIXES.items()
                if f"{n.trigger}_{suffix}" not in found]
    definition = found.get(f"{n.trigger}_upd")
    if definition is not None:
        drift = [c for c in n.watched if c not in definition and c.strip('"`') not in definition]
        if drift:
            problems.append(f"{bare}: the update trigger does not watch {', '.join(drift)}")
    return problems
