"""The fingerprint key: the secret that keys every hash syncer keeps (payload fingerprints, field
tags, database row hashes).

It lives in a file outside the state database, so that the state alone (a copy, a backup, a DBA's
view) cannot be used to test guesses of a phone number against a fingerprint. The state keeps only
a short check value, so that a wrong or replaced key is noticed instead of re-sending every user.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path
from typing import Final

from sqlalchemy.engine import make_url

from syncer.config import Config
from syncer.databases import sqlite_path
from syncer.errors import ConfigError
from syncer.state import StateStore

CHECK: Final = "key_check"
FILE_NAME: Final = "fingerprint.key"


def default_path(config: Config) -> Path | None:
    """Beside a SQLite state; in systemd's StateDirectory; else none (it must be configured)."""
    if config.state.key_file:
        return Path(config.state.key_file)
    url = make_url(config.state.url)
    if url.get_backend_name() == "sqlite":
        path = sqlite_path(config.state.url)
        return None if path is None else path.parent / FILE_NAME
    state_dir = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state_dir) / FILE_NAME if state_dir else None


def check_value(key: bytes) -> str:
    return hmac.new(key, b"syncer fingerprint key check", hashlib.sha256).hexdigest()[:16]


def load(config: Config, state: StateStore) -> bytes:
    """The key for this state: read from its file (created on the very first run)."""
    path = default_path(config)
    stored_check = state.cursors.get_meta(CHECK)
    if path is None:
        if make_url(config.state.url).get_backend_name() == "sqlite":
            key = secrets.token_bytes(32)  # an in-memory state: a key for this process only
            state.cursors.set_meta(CHECK, check_value(key))
            return key
        raise ConfigError("[state] key_file is needed with a PostgreSQL state: a file (mode "
                          "0600) that every instance sharing the state can read; syncer creates "
                          "it on the first run if it does not exist")
    if path.exists():
        key = _read(path)
    elif stored_check is None:
        key = secrets.token_bytes(32)
        _create(path, key)
    else:
        raise ConfigError(
            f"[state] key_file: {path} is missing, but the state was written with a key: "
            "restore the file (or copy it from the other instance); if it is lost, run "
            "`syncer resync --all --new-key` (every user is sent again)")
    if stored_check is None:
        state.cursors.set_meta(CHECK, check_value(key))
    elif not hmac.compare_digest(stored_check, check_value(key)):
        raise ConfigError(
            f"[state] key_file: {path} is not the key this state was written with (another "
            "instance's key, or a new one): use the right file; to start over with this one, "
            "run `syncer resync --all --new-key` (every user is sent again)")
    return key


def replace_key(config: Config, state: StateStore) -> Path:
    """A new key (after ``resync --all``: the old fingerprints are forgotten anyway)."""
    path = default_path(config)
    if path is None:
        raise ConfigError("[state] key_file is not set: there is no key file to replace")
    key = secrets.token_bytes(32)
    if path.exists():
        path.unlink()
    _create(path, key)
    state.cursors.set_meta(CHECK, check_value(key))
    return path


def _read(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[state] key_file: cannot read {path} as a key ({exc})") from None
    if len(key) < 16:
        raise ConfigError(f"[state] key_file: {path} holds fewer than 16 bytes")
    return key


def _create(path: Path, key: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(key.hex() + "\n")
    except OSError as exc:
        raise ConfigError(f"[state] key_file: cannot create {path} ({exc.strerror})") from None
