"""The source database: the application's users table (or a query), read through SQLAlchemy.

PostgreSQL (psycopg 3), MySQL/MariaDB (PyMySQL) and SQLite. Two kinds of read:

* the *hash scan* streams every row as (key, row hash, soft-delete flag), in an order the state can
  follow (integers by value, everything else by code point). PostgreSQL and MySQL compute the
  row hash of the mapped columns themselves, so an unchanged row never crosses the wire whole;
  SQLite has no such function and the hash is computed here.
* *reads by key* fetch the mapped columns of the rows that may have changed.

Nothing here interprets the values; :mod:`syncer.mapping` does.
"""

from __future__ import annotations

import difflib
import hashlib
import uuid
from collections.abc import Iterator, Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, inspect, text
from sqlalchemy import types as satypes
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError

from syncer.config import CaptureConfig, SourceConfig, is_column
from syncer.databases import create_source_engine, describe_error
from syncer.errors import ConfigError, SourceError
from syncer.model import KeyKind, RawRow
from syncer.normalize import Invalid, is_deleted_flag
from syncer.secret import redact_url

_READ_CHUNK: Final = 1000
_U64: Final = 1 << 64
_I63: Final = 1 << 63


def py_row_hash(seed: int, key: object, values: Sequence[object]) -> int:
    """The row hash where the database cannot compute one (SQLite): signed 64-bit."""
    digest = hashlib.blake2b(repr((seed, key, tuple(values))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Source:
    """Reads one users table (or query) of one database."""

    def __init__(self, config: SourceConfig, capture: CaptureConfig, columns: Sequence[str],
                 seed: int, engine: Engine | None = None,
                 owners: dict[str, str] | None = None) -> None:
        self.config = config
        self.owners = dict(owners or {})  # column -> the config key that names it
        self.engine = engine or create_source_engine(config.url)
        self.dialect = self.engine.dialect.name
        self.soft_delete = capture.soft_delete_column
        self.created = capture.created_column
        self.watermark = capture.watermark_column if capture.mode == "watermark" else None
        self.columns = list(columns)
        self.seed = seed
        self._kind: KeyKind | None = None
        self._pk_type: satypes.TypeEngine[Any] | None = None
        self.column_types: dict[str, satypes.TypeEngine[Any]] = {}
        prep = self.engine.dialect.identifier_preparer
        self.q = prep.quote
        if config.table:
            self.relation = (f"{self.q(config.schema_)}.{self.q(config.table)}" if config.schema_
                             else self.q(config.table))
        else:
            self.relation = f"({config.query}) AS syncer_q"
        self.pk = self.q(config.primary_key)

    # -- helpers

    def connect(self) -> Connection:
        try:
            return self.engine.connect()
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot connect to the source database "
                              f"({redact_url(self.config.url)}): {describe_error(exc)}") from exc

    def close(self) -> None:
        self.engine.dispose()

    @property
    def description(self) -> str:
        what = self.config.table or "query"
        return f"{what} in {redact_url(self.config.url)}"

    def hash_expr(self) -> str | None:
        """SQL computing the signed 64-bit row hash of key + mapped columns + soft-delete column."""
        parts = [self.pk, *(self.q(c) for c in self.columns)]
        if self.soft_delete:
            parts.append(self._soft_expr())
        joined = ", ".join(parts)
        if self.dialect == "postgresql":
            return f"hashtextextended(ROW({joined})::text, {self.seed})"
        if self.dialect in ("mysql", "mariadb"):
            return (f"CAST(CONV(SUBSTRING(MD5(JSON_ARRAY({self.seed}, {joined})), 1, 16), 16, 10)"
                    " AS UNSIGNED)")
        return None

    def order_expr(self) -> str:
        if self.key_kind() is not KeyKind.TEXT:
            return self.pk
        if self.dialect == "postgresql":  # any type (numeric, a domain...) as text, bytewise
            return f'({self.pk})::text COLLATE "C"'
        if self.dialect in ("mysql", "mariadb"):
            return f"CAST({self.pk} AS BINARY)"
        return f"{self.pk} COLLATE BINARY"

    def _soft_expr(self) -> str:
        """The soft-delete column, or its expression (``NOT is_active``) in parentheses."""
        if not self.soft_delete:
            return "NULL"
        return self.q(self.soft_delete) if is_column(self.soft_delete) else f"({self.soft_delete})"

    def _light_head(self, expr: str) -> str:
        """What a read without the mapped values returns: key, row hash, soft-delete flag, and
        ``[capture] created_column`` when there is one (who holds the key)."""
        created = f", {self.q(self.created)}" if self.created else ""
        return f"{self.pk}, {expr}, {self._soft_expr()}{created}"

    def _created_of(self, mapped: Sequence[object]) -> object:
        return mapped[self.columns.index(self.created)] if self.created else None

    # -- checks

    def check(self) -> None:
        """Connect, and make sure the table (or query) has the key and every mapped column."""
        wanted = [self.config.primary_key, *self.columns]
        for extra in (self.soft_delete, self.watermark):
            if extra and is_column(extra):
                wanted.append(extra)
        with self.connect() as conn:
            try:
                if self.config.table:
                    insp = inspect(conn)
                    cols = {c["name"]: c["type"] for c in insp.get_columns(
                        self.config.table, schema=self.config.schema_)}
                    have = set(cols)
                    self._pk_type = cols.get(self.config.primary_key)
                    self.column_types = cols
                else:
                    result = conn.execute(text(f"SELECT * FROM {self.relation} LIMIT 0"))
                    have = set(result.keys())
            except NoSuchTableError:
                raise ConfigError(f"[source] table {self.config.table!r} does not exist in "
                                  f"{redact_url(self.config.url)}") from None
            except SQLAlchemyError as exc:
                raise SourceError(f"cannot read {self.description}: {describe_error(exc)}") \
                    from exc
        self._check_soft_delete_expression()
        missing = [c for c in dict.fromkeys(wanted) if c not in have]
        if missing:
            where = f"table {self.config.table!r}" if self.config.table else "the [source] query"
            problems = []
            for column in missing:
                hint = difflib.get_close_matches(column, sorted(have), n=1)
                owner = self.owners.get(column, "a key")
                problems.append(f"{owner} = {column!r}: {where} has no column {column!r}"
                                + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            raise ConfigError(problems)

    def _check_soft_delete_expression(self) -> None:
        """A soft-delete expression (``NOT is_active``) the database cannot evaluate is a
        config error, named by its key."""
        if not self.soft_delete or is_column(self.soft_delete):
            return
        try:
            with self.connect() as conn:
                conn.exec_driver_sql(f"SELECT {self._soft_expr()} FROM {self.relation} "
                                     "WHERE 1 = 0")
        except SQLAlchemyError as exc:
            raise ConfigError(f"[capture] soft_delete_column = {self.soft_delete!r}: the "
                              f"database cannot evaluate it ({describe_error(exc)})") from None

    def key_kind(self) -> KeyKind:
        """How keys are ordered: from the column's type, else from a sample value (until the
        table has a row, the guess is not kept)."""
        if self._kind is not None:
            return self._kind
        kind, sure = self._detect_kind()
        if sure:
            self._kind = kind
        return kind

    def _detect_kind(self) -> tuple[KeyKind, bool]:
        if self._pk_type is None and self.config.table:
            self.check()
        pk_type = self._pk_type
        if isinstance(pk_type, satypes.Integer):
            return KeyKind.INT, True
        if isinstance(pk_type, satypes.Uuid):
            return KeyKind.UUID, True
        if isinstance(pk_type, satypes.String):
            return KeyKind.TEXT, True
        with self.connect() as conn:
            try:
                sample = conn.execute(text(
                    f"SELECT {self.pk} FROM {self.relation} WHERE {self.pk} IS NOT NULL LIMIT 1"
                )).scalar()
            except SQLAlchemyError as exc:
                raise SourceError(f"cannot read {self.description}: {describe_error(exc)}") \
                    from exc
        if isinstance(sample, int) and not isinstance(sample, bool):
            return KeyKind.INT, True
        if isinstance(sample, uuid.UUID):
            return KeyKind.UUID, True
        return KeyKind.TEXT, sample is not None

    def typed_key(self, user_id: str, source_key: str | None) -> object:
        """The value to look a user up by in the source, from what the state keeps."""
        raw = source_key if source_key is not None else user_id
        kind = self.key_kind()
        try:
            if kind is KeyKind.INT:
                return int(raw)
            if kind is KeyKind.UUID:
                return uuid.UUID(raw)
        except ValueError:
            return raw
        return raw

    def _row_hash(self, value: Any) -> int | None:
        if value is None:
            return None
        number = int(value)
        return number - _U64 if number >= _I63 else number

    # -- reads

    def hash_scan(self, low: int | None = None, high: int | None = None) -> Iterator[RawRow]:
        """Every row as (key, row hash, deleted), in merge order. One streamed query. With
        ``low``/``high`` (integer keys), only the keys in [low, high)."""
        expr = self.hash_expr()
        where = " AND ".join(
            ([f"{self.pk} >= {int(low)}"] if low is not None else [])
            + ([f"{self.pk} < {int(high)}"] if high is not None else []))
        where = f" WHERE {where}" if where else ""
        if expr is not None:
            sql = (f"SELECT {self._light_head(expr)} FROM {self.relation}{where} "
                   f"ORDER BY {self.order_expr()}")
        else:
            cols = ", ".join(self.q(c) for c in self.columns)
            sql = (f"SELECT {self.pk}, {self._soft_expr()}, {cols} FROM {self.relation}{where} "
                   f"ORDER BY {self.order_expr()}")
        try:
            with self.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=5000) \
                    .exec_driver_sql(sql)
                if expr is not None:
                    row_hash = self._row_hash
                    created = 3 if self.created else None
                    for row in result:
                        soft = row[2]
                        if soft is None and created is None:
                            yield RawRow(row[0], row_hash(row[1]), False)
                            continue
                        deleted, unreadable = self._soft_flag(soft)
                        yield RawRow(row[0], row_hash(row[1]), deleted, None, unreadable,
                                     row[created] if created else None)
                else:
                    seed = self.seed
                    for row in result:
                        values = tuple(row[2:])
                        soft = row[1]
                        deleted, unreadable = self._soft_flag(soft)
                        yield RawRow(row[0], py_row_hash(seed, row[0], (*values, soft)),
                                     deleted, None, unreadable, self._created_of(values))
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot scan {self.description}: {describe_error(exc)}") from exc

    def sums_blocks(self) -> bool:
        """Whether :meth:`block_sums` works here (integer keys, a database that hashes)."""
        return self.hash_expr() is not None and self.key_kind() is KeyKind.INT

    def block_sums(self, bounds: Sequence[int]) -> dict[int, tuple[int, int, int]] | None:
        """Per key range (bucket 0: below bounds[0]; bucket i: [bounds[i-1], bounds[i]); the
        last: from bounds[-1] on), the number of rows and the sums of the low and high 32 bits of
        their row hashes, computed by the database: unchanged ranges need no row to cross the
        wire. None where the database cannot (SQLite, keys that are not integers)."""
        expr = self.hash_expr()
        if expr is None or not self.sums_blocks() or not bounds:
            return None
        listed = ", ".join(str(int(b)) for b in bounds)
        if self.dialect == "postgresql":
            bucket = f"width_bucket(({self.pk})::bigint, ARRAY[{listed}]::bigint[])"
        else:
            bucket = f"INTERVAL({self.pk}, {listed})"
        sql = (f"SELECT b, COUNT(*), SUM(h & 4294967295), SUM((h >> 32) & 4294967295) FROM "
               f"(SELECT {bucket} AS b, {expr} AS h FROM {self.relation}) AS syncer_b "
               "GROUP BY b")
        try:
            with self.connect() as conn:
                rows = conn.exec_driver_sql(sql).all()
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot scan {self.description}: {describe_error(exc)}") from exc
        if any(b is None or int(b) < 0 for b, *_ in rows):
            return None   # NULL keys (a query source): the row-by-row merge reports them
        return {int(b): (int(n), int(lo), int(hi)) for b, n, lo, hi in rows}

    def _select_head(self) -> tuple[str, bool]:
        """The columns every read returns: key, row hash (or NULL), soft-delete flag, mapped
        columns. The second value says whether the database computed the hash."""
        expr = self.hash_expr()
        cols = "".join(", " + self.q(c) for c in self.columns)
        return f"{self.pk}, {expr or 'NULL'}, {self._soft_expr()}{cols}", expr is not None

    def _raw(self, row: Any, db_hash: bool, values: bool) -> RawRow:
        """A row of :meth:`_select_head` (or of :meth:`_light_head` when the database hashes
        and ``values`` is false)."""
        soft = row[2]
        deleted, unreadable = self._soft_flag(soft)
        if db_hash and not values:
            return RawRow(row[0], self._row_hash(row[1]), deleted, None, unreadable,
                          row[3] if self.created else None)
        mapped = row[3:3 + len(self.columns)]
        h = self._row_hash(row[1]) if db_hash else py_row_hash(self.seed, row[0], (*mapped, soft))
        return RawRow(row[0], h, deleted,
                      dict(zip(self.columns, mapped, strict=True)) if values else None,
                      unreadable, self._created_of(mapped))

    def _soft_flag(self, value: object) -> tuple[bool, tuple[str, ...]]:
        """(deleted, unreadable columns) from the soft-delete column's value."""
        try:
            return is_deleted_flag(value), ()
        except Invalid:
            return False, (self.soft_delete or "soft_delete_column",)

    def read(self, keys: Sequence[object], *, values: bool = True) -> list[RawRow]:
        """The current rows for these keys (with their mapped values unless ``values`` is
        false). Absent keys are absent."""
        if not keys:
            return []
        head, db_hash = self._select_head()
        if not values and db_hash:
            head = self._light_head(str(self.hash_expr()))
        sql = f"SELECT {head} FROM {self.relation} WHERE "
        out: list[RawRow] = []
        try:
            with self.connect() as conn:
                for i in range(0, len(keys), _READ_CHUNK):
                    part = list(keys[i:i + _READ_CHUNK])
                    out.extend(self._raw(row, db_hash, values)
                               for row in self._in_query(conn, sql, part))
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read {self.description}: {describe_error(exc)}") from exc
        return out

    def since(self, column: str, low: object, *, exclusive: bool = False,
              also: Sequence[tuple[object, object]] = (), unset: bool = False
              ) -> Iterator[tuple[RawRow, object]]:
        """Rows whose ``column`` is at or after ``low`` (strictly after when ``exclusive``;
        every row with a value when ``low`` is None), and those in any of the ``also`` ranges
        [from, to), as (key, hash, deleted) with the column's value; with ``unset``, also the
        rows whose column is NULL (or a MySQL zero date). Index-friendly statements, streamed."""
        head, db_hash = self._select_head()
        if db_hash:
            head = self._light_head(str(self.hash_expr()))
        col = self.q(column)
        op = ">" if exclusive else ">="
        ranges = [f"{col} {op} :low" if low is not None else f"{col} IS NOT NULL"]
        params: dict[str, Any] = {"low": low} if low is not None else {}
        for i, (begin, end) in enumerate(also):
            ranges.append(f"({col} >= :from{i} AND {col} < :to{i})")
            params[f"from{i}"], params[f"to{i}"] = begin, end
        statements = [(f"SELECT {head}, {col} FROM {self.relation} WHERE "
                       + " OR ".join(ranges), params)]
        if unset:
            zero = f" OR {col} < '1000-01-01'" if self.dialect in ("mysql", "mariadb") else ""
            statements.append((f"SELECT {head}, {col} FROM {self.relation} "
                               f"WHERE {col} IS NULL{zero}", {}))
        try:
            with self.connect() as conn:
                for sql, values in statements:
                    result = conn.execution_options(stream_results=True, yield_per=5000) \
                        .execute(text(sql), values)
                    for row in result:
                        yield self._raw(row, db_hash, False), row[-1]
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read {self.description}: {describe_error(exc)}") from exc

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        try:
            with self.connect() as conn:
                return conn.execute(text(sql), params or {}).scalar()
        except SQLAlchemyError as exc:
            raise SourceError(f"cannot read {self.description}: {describe_error(exc)}") from exc

    def run(self, sql: str, params: dict[str, Any] | None = None) -> list[Any]:
        """Rows of one statement in its own transaction (committed when it writes)."""
        try:
            with self.engine.begin() as conn:
                result = conn.execute(text(sql), params or {})
                return list(result) if result.returns_rows else []
        except SQLAlchemyError as exc:
            raise SourceError(f"{self.description}: {describe_error(exc)}") from exc

    def _in_query(self, conn: Connection, sql: str, keys: list[object]) -> Any:
        if self.dialect == "postgresql":
            return conn.execute(text(sql + f"{self.pk} = ANY(:keys)"), {"keys": keys})
        stmt = text(sql + f"{self.pk} IN :keys").bindparams(bindparam("keys", expanding=True))
        return conn.execute(stmt, {"keys": keys})
