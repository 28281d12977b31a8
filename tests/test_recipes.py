"""The README's recipes, end to end: a Django app (``auth_user`` + ``accounts_profile``) and a
Rails app (``users`` + ``profiles``), with tables shaped as those frameworks create them, on
PostgreSQL and MariaDB. Outbox mode installed by ``syncer outbox install`` alone, the daemon
running, and each change the issue names reaching the sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from syncer.sandbox import SandboxServer

from .helpers import SANDBOX, execute, kind_of, start_daemon, stop, wait_for

# ----------------------------------------------------------------------------- the apps

DJANGO_TABLES = {
    "postgresql": [
        """CREATE TABLE auth_user (
            id serial PRIMARY KEY, password varchar(128) NOT NULL DEFAULT '',
            last_login timestamptz NULL, is_superuser boolean NOT NULL DEFAULT false,
            username varchar(150) NOT NULL UNIQUE, first_name varchar(150) NOT NULL DEFAULT '',
            last_name varchar(150) NOT NULL DEFAULT '', email varchar(254) NOT NULL DEFAULT '',
            is_staff boolean NOT NULL DEFAULT false, is_active boolean NOT NULL DEFAULT true,
            date_joined timestamptz NOT NULL DEFAULT now())""",
        """CREATE TABLE accounts_profile (
            id bigserial PRIMARY KEY, phone varchar(20) NOT NULL DEFAULT '',
            marketing_consent boolean NOT NULL DEFAULT false,
            sms_consent boolean NOT NULL DEFAULT false,
            updated_at timestamptz NOT NULL DEFAULT now(),
            user_id integer NOT NULL UNIQUE REFERENCES auth_user (id)
                DEFERRABLE INITIALLY DEFERRED)""",
    ],
    "mariadb": [
        """CREATE TABLE auth_user (
            id integer AUTO_INCREMENT PRIMARY KEY, password varchar(128) NOT NULL DEFAULT '',
            last_login datetime(6) NULL, is_superuser bool NOT NULL DEFAULT 0,
            username varchar(150) NOT NULL UNIQUE, first_name varchar(150) NOT NULL DEFAULT '',
            last_name varchar(150) NOT NULL DEFAULT '', email varchar(254) NOT NULL DEFAULT '',
            is_staff bool NOT NULL DEFAULT 0, is_active bool NOT NULL DEFAULT 1,
            date_joined datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))""",
        """CREATE TABLE accounts_profile (
            id bigint AUTO_INCREMENT PRIMARY KEY, phone varchar(20) NOT NULL DEFAULT '',
            marketing_consent bool NOT NULL DEFAULT 0, sms_consent bool NOT NULL DEFAULT 0,
            updated_at datetime(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
            user_id integer NOT NULL UNIQUE,
            CONSTRAINT accounts_profile_user_id_fk FOREIGN KEY (user_id)
                REFERENCES auth_user (id))""",
    ],
}

DJANGO_CONFIG = '''
[source]
url = "{url}"
query = """
SELECT u.id, u.email, u.first_name, u.is_active,
       p.phone, p.marketing_consent, p.sms_consent
  FROM auth_user u LEFT JOIN accounts_profile p ON p.user_id = u.id"""

[[source.tables]]
name = "auth_user"
key = "id"

[[source.tables]]
name = "accounts_profile"
key = "user_id"
watermark_column = "updated_at"

[capture]
mode = "outbox"
soft_delete_column = "NOT is_active"

[mapping]
empty_as_null = true

[mapping.user_properties]
email_address = "email"
phone_number = "phone"
marketing_notification_consent = "marketing_consent"
marketing_notification_sms_consent = "sms_consent"

[mapping.custom_user_properties]
first_name = "first_name"
'''

RAILS_TABLES = {
    "postgresql": [
        """CREATE TABLE users (
            id bigserial PRIMARY KEY, email varchar NOT NULL DEFAULT '',
            encrypted_password varchar NOT NULL DEFAULT '', sign_in_count integer DEFAULT 0,
            discarded_at timestamp(6), created_at timestamp(6) NOT NULL DEFAULT now(),
            updated_at timestamp(6) NOT NULL DEFAULT now())""",
        """CREATE TABLE profiles (
            id bigserial PRIMARY KEY, user_id bigint NOT NULL REFERENCES users (id),
            phone varchar, marketing_opt_in boolean, sms_opt_in boolean,
            created_at timestamp(6) NOT NULL DEFAULT now(),
            updated_at timestamp(6) NOT NULL DEFAULT now())""",
        "CREATE UNIQUE INDEX index_profiles_on_user_id ON profiles (user_id)",
    ],
    "mariadb": [
        """CREATE TABLE users (
            id bigint AUTO_INCREMENT PRIMARY KEY, email varchar(255) NOT NULL DEFAULT '',
            encrypted_password varchar(255) NOT NULL DEFAULT '', sign_in_count int DEFAULT 0,
            discarded_at datetime(6), created_at datetime(6) NOT NULL DEFAULT NOW(6),
            updated_at datetime(6) NOT NULL DEFAULT NOW(6))""",
        """CREATE TABLE profiles (
            id bigint AUTO_INCREMENT PRIMARY KEY, user_id bigint NOT NULL,
            phone varchar(255), marketing_opt_in tinyint(1), sms_opt_in tinyint(1),
            created_at datetime(6) NOT NULL DEFAULT NOW(6),
            updated_at datetime(6) NOT NULL DEFAULT NOW(6),
            UNIQUE KEY index_profiles_on_user_id (user_id),
            CONSTRAINT fk_rails_profiles_user FOREIGN KEY (user_id) REFERENCES users (id))""",
    ],
}

RAILS_CONFIG = '''
[source]
url = "{url}"
query = """
SELECT users.id, users.email, users.discarded_at,
       profiles.phone, profiles.marketing_opt_in, profiles.sms_opt_in
  FROM users LEFT JOIN profiles ON profiles.user_id = users.id"""

[[source.tables]]
name = "users"
key = "id"

[[source.tables]]
name = "profiles"
key = "user_id"

[capture]
mode = "outbox"
soft_delete_column = "discarded_at"

[mapping]
empty_as_null = ["email"]

[mapping.user_properties]
email_address = "email"
phone_number = "phone"
marketing_notification_consent = "marketing_opt_in"
marketing_notification_sms_consent = "sms_opt_in"
'''


@dataclass(frozen=True)
class App:
    """One framework's tables and the SQL its ORM would run for each change."""

    name: str
    tables: dict[str, list[str]]
    config: str
    add_user: Callable[[int, str], str]          # (id, e-mail) -> INSERT of the user
    add_profile: Callable[[int, str, bool], str]  # (id, phone, consent) -> INSERT
    set_email: Callable[[int, str], str]
    withdraw_all: str                              # a bulk UPDATE of the consents
    hard_delete: Callable[[int], list[str]]        # the profile first, as the ORMs do
    deactivate: Callable[[int], str]
    profile_table: str


DJANGO = App(
    "django", DJANGO_TABLES, DJANGO_CONFIG,
    add_user=lambda i, email: (
        "INSERT INTO auth_user (id, username, email, first_name) "
        f"VALUES ({i}, 'user{i}', '{email}', 'Name{i}')"),
    add_profile=lambda i, phone, ok: (
        "INSERT INTO accounts_profile (user_id, phone, marketing_consent, sms_consent) "
        f"VALUES ({i}, '{phone}', {int(ok)} = 1, {int(ok)} = 1)"),
    set_email=lambda i, email: f"UPDATE auth_user SET email = '{email}' WHERE id = {i}",
    withdraw_all="UPDATE accounts_profile SET marketing_consent = (1 = 0)",
    hard_delete=lambda i: [f"DELETE FROM accounts_profile WHERE user_id = {i}",
                           f"DELETE FROM auth_user WHERE id = {i}"],
    deactivate=lambda i: f"UPDATE auth_user SET is_active = (1 = 0) WHERE id = {i}",
    profile_table="accounts_profile",
)

RAILS = App(
    "rails", RAILS_TABLES, RAILS_CONFIG,
    add_user=lambda i, email: f"INSERT INTO users (id, email) VALUES ({i}, '{email}')",
    add_profile=lambda i, phone, ok: (
        "INSERT INTO profiles (user_id, phone, marketing_opt_in, sms_opt_in) "
        f"VALUES ({i}, '{phone}', {int(ok)} = 1, {int(ok)} = 1)"),
    set_email=lambda i, email: (
        f"UPDATE users SET email = '{email}', updated_at = CURRENT_TIMESTAMP WHERE id = {i}"),
    withdraw_all="UPDATE profiles SET marketing_opt_in = (1 = 0)",   # update_all: no callbacks
    hard_delete=lambda i: [f"DELETE FROM profiles WHERE user_id = {i}",
                           f"DELETE FROM users WHERE id = {i}"],
    deactivate=lambda i: f"UPDATE users SET discarded_at = CURRENT_TIMESTAMP WHERE id = {i}",
    profile_table="profiles",
)


# ----------------------------------------------------------------------------- running it


def write_app_config(app: App, tmp_path: Path, url: str, server: SandboxServer) -> Path:
    path = tmp_path / f"{app.name}.toml"
    path.write_text(app.config.format(url=url) + f"""
[schedule]
interval_seconds = 60

[state]
url = "sqlite:///{tmp_path / 'state.db'}"

[blux]
base_url = "{server.blux_base_url}"
application_id = "{SANDBOX.blux_application_id}"
secret_key = "{SANDBOX.blux_secret_key}"

[nachocode]
base_url = "{server.nachocode_base_url}"
api_key = "{SANDBOX.nachocode_api_key}"
secret_key = "{SANDBOX.nachocode_secret_key}"
""")
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "syncer", *args], capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "COLUMNS": "1000"})


def outbox_depth(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        depth = int(conn.execute(sa.text("SELECT count(*) FROM syncer_outbox")).scalar_one())
    engine.dispose()
    return depth


class Watch:
    """Times each change from its commit to the moment the sandbox holds it."""

    def __init__(self, server: SandboxServer) -> None:
        self.server = server
        self.latencies: dict[str, float] = {}

    def users(self) -> dict[str, Any]:
        return dict(self.server.app.snapshot()["users"])

    def props(self, uid: int) -> dict[str, Any]:
        return dict(self.users().get(str(uid), {}).get("user_properties", {}))

    def withdrawn(self) -> set[str]:
        return set(self.server.app.snapshot()["withdrawn_user_ids"])

    def change(self, name: str, url: str, statements: list[str],
               landed: Callable[[], bool]) -> None:
        execute_all(url, statements)
        began = time.monotonic()
        wait_for(landed, timeout=60)
        self.latencies[name] = time.monotonic() - began


def execute_all(url: str, statements: list[str]) -> None:
    """In one transaction, as the ORM would."""
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        for statement in statements:
            conn.execute(sa.text(statement))
    engine.dispose()


@pytest.mark.parametrize("app", [DJANGO, RAILS], ids=["django", "rails"])
@pytest.mark.parametrize("source_url", ["postgresql", "mariadb"], indirect=True)
def test_a_recipe_catches_every_change_with_the_daemon(
        app: App, source_url: str, tmp_path: Path, sandbox_server: SandboxServer) -> None:
    kind = kind_of(source_url)
    for ddl in app.tables[kind]:
        execute(source_url, ddl)
    execute_all(source_url, [s for i in (1, 2, 3) for s in (
        app.add_user(i, f"u{i}@example.com"), app.add_profile(i, f"010-1234-000{i}", True))])
    config = write_app_config(app, tmp_path, source_url, sandbox_server)
    installed = cli("outbox", "install", "-c", str(config))
    assert installed.returncode == 0, installed.stderr
    sql = cli("outbox", "sql", "-c", str(config)).stdout
    assert sql.count("CREATE TRIGGER") == 6   # insert, update, delete on both tables

    daemon = start_daemon(config, log=tmp_path / "daemon.log")
    watch = Watch(sandbox_server)
    try:
        wait_for(lambda: len(watch.users()) == 3, timeout=60)
        assert watch.props(1)["marketing_notification_consent"] is True
        watch.change("e-mail change in the users table", source_url,
                     [app.set_email(1, "new1@example.com")],
                     lambda: watch.props(1).get("email_address") == "new1@example.com")
        watch.change("bulk UPDATE of consents in the profile table", source_url,
                     [app.withdraw_all],
                     lambda: all(watch.props(i).get("marketing_notification_consent") is False
                                 for i in (1, 2, 3)))
        watch.change("user created before its profile", source_url,
                     [app.add_user(4, "u4@example.com")],
                     lambda: watch.props(4).get("email_address") == "u4@example.com")
        assert "phone_number" not in watch.props(4)
        watch.change("the profile created later", source_url,
                     [app.add_profile(4, "010-1234-0004", True)],
                     lambda: watch.props(4).get("phone_number") == "01012340004")
        watch.change("hard delete of a user and its profile", source_url, app.hard_delete(2),
                     lambda: "2" not in watch.users() and "2" in watch.withdrawn())
        watch.change("deactivated", source_url, [app.deactivate(3)],
                     lambda: "3" not in watch.users() and "3" in watch.withdrawn())
        # a row deleted in the joined table is a change of the user, not a deletion
        watch.change("profile deleted, user kept", source_url,
                     [f"DELETE FROM {app.profile_table} WHERE user_id = 4"],
                     lambda: outbox_depth(source_url) == 0)
        assert "4" in watch.users() and "4" not in watch.withdrawn()
    finally:
        assert stop(daemon) == 0
    status = cli("status", "-c", str(config))
    tables = ", ".join(t for t in ("auth_user", "accounts_profile", "users", "profiles")
                       if f'name = "{t}"' in app.config)
    assert f"healthy on {tables}" in status.stdout, status.stdout
    print(f"{app.name} on {kind}: commit to sandbox, seconds: "
          + ", ".join(f"{k} {v:.2f}" for k, v in watch.latencies.items()))
