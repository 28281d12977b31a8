"""One contract for the source, run against SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import sqlalchemy as sa

from syncer.config import CaptureConfig, SourceConfig
from syncer.errors import ConfigError
from syncer.model import KeyKind
from syncer.source import Source

from .helpers import create_users_table, execute, insert_users, user_row

COLUMNS = ["name", "phone", "email", "marketing", "sms", "points"]


def source(url: str, **cfg: object) -> Source:
    config = SourceConfig.model_validate({"url": url, "table": "users", **cfg})
    return Source(config, CaptureConfig(soft_delete_column="deleted_at"), COLUMNS, seed=42)


def test_hash_scan_is_ordered_and_sees_only_mapped_changes(source_url: str) -> None:
    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in (5, 3, 10, 1, 200, 20)])
    src = source(source_url)
    src.check()
    assert src.key_kind() is KeyKind.INT
    first = list(src.hash_scan())
    assert [r.key for r in first] == [1, 3, 5, 10, 20, 200]
    assert all(r.row_hash is not None and -(2**63) <= r.row_hash < 2**63 for r in first)
    assert len({r.row_hash for r in first}) == 6
    execute(source_url, "UPDATE users SET touched = 'later' WHERE id = 3")    # unmapped
    execute(source_url, "UPDATE users SET points = 77 WHERE id = 5")          # mapped
    execute(source_url, "UPDATE users SET deleted_at = '2026-01-01' WHERE id = 10")
    second = {r.key: r for r in src.hash_scan()}
    before = {r.key: r for r in first}
    assert second[3].row_hash == before[3].row_hash
    assert second[5].row_hash != before[5].row_hash
    assert second[10].deleted and not second[5].deleted
    assert second[10].row_hash != before[10].row_hash
    src.close()


def test_read_by_key_returns_values_and_skips_absent_keys(source_url: str) -> None:
    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in range(1, 2501)])
    src = source(source_url)
    rows = src.read([*range(1, 2501, 2), 99_999])
    assert len(rows) == 1250
    by_key = {r.key: r for r in rows}
    row = by_key[7]
    assert row.values is not None
    assert row.values["name"] == "user 7" and row.values["email"] == "u7@example.com"
    assert Decimal(str(row.values["points"])) == 7
    scan = {r.key: r.row_hash for r in src.hash_scan()}
    assert all(scan[k] == r.row_hash for k, r in by_key.items())  # same hash both ways
    src.close()


def test_text_keys_scan_in_code_point_order(source_url: str) -> None:
    create_users_table(source_url, key_type="VARCHAR(40)")
    keys = ["b", "A", "c", "10", "9", "Z", "é", "가"]  # distinct under case-insensitive collations
    insert_users(source_url, [user_row(i, id=k) for i, k in enumerate(keys)])
    src = source(source_url)
    assert src.key_kind() is KeyKind.TEXT
    assert [r.key for r in src.hash_scan()] == sorted(keys)
    assert {r.key for r in src.read(["A", "가", "nope"])} == {"A", "가"}
    src.close()


def test_query_mode(source_url: str) -> None:
    create_users_table(source_url)
    insert_users(source_url, [user_row(i) for i in range(1, 11)])
    config = SourceConfig.model_validate({
        "url": source_url,
        "query": "SELECT id, name, phone, email, marketing, sms, points, deleted_at FROM users "
                 "WHERE id <= 5"})
    src = Source(config, CaptureConfig(soft_delete_column="deleted_at"), COLUMNS, seed=1)
    src.check()
    assert src.key_kind() is KeyKind.INT
    assert [r.key for r in src.hash_scan()] == [1, 2, 3, 4, 5]
    assert {r.key for r in src.read([2, 9])} == {2}
    src.close()


def test_missing_table_or_columns_are_config_errors(source_url: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        source(source_url).check()
    create_users_table(source_url)
    cfg = SourceConfig.model_validate({"url": source_url, "table": "users"})
    src = Source(cfg, CaptureConfig(), ["name", "no_such_column"], seed=1)
    with pytest.raises(ConfigError, match="no_such_column"):
        src.check()
    src.close()


def test_postgres_uuid_keys(pg_url: str) -> None:
    import uuid

    execute(pg_url, "CREATE TABLE users (id uuid PRIMARY KEY, name text, phone text, email text,"
                    " marketing int, sms text, points numeric, deleted_at text)")
    ids = sorted(uuid.UUID(int=n * 7919 << 64) for n in range(1, 6))
    insert_users(pg_url, [{"id": i, "name": "x", "phone": None, "email": None, "marketing": 1,
                           "sms": "Y", "points": 1, "deleted_at": None} for i in ids])
    src = source(pg_url)
    assert src.key_kind() is KeyKind.UUID
    assert [r.key for r in src.hash_scan()] == ids
    assert [str(r.key) for r in src.hash_scan()] == sorted(str(i) for i in ids)
    assert len(src.read([src.typed_key(str(ids[0]), None)])) == 1
    src.close()


def test_timestamps_and_decimals_come_back_typed(source_url: str) -> None:
    engine = sa.create_engine(source_url)
    ts = "TIMESTAMP" if "sqlite" not in source_url else "TEXT"
    with engine.begin() as conn:
        conn.execute(sa.text(f"CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(10), "
                             f"phone VARCHAR(10), email VARCHAR(10), marketing INTEGER, "
                             f"sms VARCHAR(2), points NUMERIC(10, 2), seen {ts}, "
                             f"deleted_at VARCHAR(10))"))
        conn.execute(sa.text("INSERT INTO users VALUES (1, 'a', NULL, NULL, 1, 'Y', 12.50, "
                             "'2026-01-02 03:04:05', NULL)"))
    engine.dispose()
    cfg = SourceConfig.model_validate({"url": source_url, "table": "users"})
    src = Source(cfg, CaptureConfig(), ["points", "seen"], seed=1)
    (row,) = src.read([1])
    assert row.values is not None
    assert float(str(row.values["points"])) == 12.5
    if "sqlite" not in source_url:
        assert row.values["seen"] == dt.datetime(2026, 1, 2, 3, 4, 5)
    src.close()
