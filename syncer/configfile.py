"""Reading the config file: TOML, ``${VAR}`` from the environment, secrets and URLs given as
``<key>_file`` (systemd credentials), relative paths made relative to the file's folder, and every
problem reported at once with its TOML path (``config.toml: [blux] application_id is missing``).
The result is the typed tree of :mod:`syncer.config`."""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import ValidationError

from syncer.config import Config
from syncer.errors import ConfigError

DEFAULT_PATH: Final = "/etc/syncer/config.toml"
ENV_PATH: Final = "SYNCER_CONFIG"

# Keys that may be given as ``<key>_file`` instead, per table.
_FILE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "source": ("url",),
    "state": ("url",),
    "blux": ("secret_key",),
    "nachocode": ("api_key", "secret_key"),
}

# No `$`: it would clash with dollar quoting in the generated PostgreSQL trigger function.
_VAR = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)\})")


def _interpolate(value: str, where: str, env: Mapping[str, str], problems: list[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(1) == "$":
            return "$"
        name = match.group(2)
        if name not in env:
            problems.append(f"{where}: environment variable {name} is not set")
            return ""
        return env[name]

    return _VAR.sub(repl, value)


def _walk(node: Any, where: str, env: Mapping[str, str], problems: list[str]) -> Any:
    if isinstance(node, str):
        return _interpolate(node, where, env, problems)
    if isinstance(node, dict):
        return {k: _walk(v, _join(where, k, v), env, problems) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk(v, f"{where}[{i}]", env, problems) for i, v in enumerate(node)]
    return node


def _join(where: str, key: str, value: Any) -> str:
    if isinstance(value, dict):
        return f"[{where[1:-1]}.{key}]" if where else f"[{key}]"
    return f"{where} {key}" if where else key


def _read_secret_files(raw: dict[str, Any], base: Path, problems: list[str]) -> None:
    for table, keys in _FILE_KEYS.items():
        section = raw.get(table)
        if not isinstance(section, dict):
            continue
        for key in keys:
            file_key = f"{key}_file"
            if file_key not in section:
                continue
            if key in section:
                problems.append(f"[{table}] give `{key}` or `{file_key}`, not both")
                section.pop(file_key)
                continue
            path = Path(str(section.pop(file_key)))
            if not path.is_absolute():
                path = base / path
            try:
                section[key] = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                problems.append(f"[{table}] {file_key}: cannot read {path} ({exc.strerror})")


def _resolve_paths(raw: dict[str, Any], base: Path) -> None:
    """A relative SQLite path (``[source] url``, ``[state] url``) or ``[state] key_file`` is
    relative to the config file's folder, not to wherever the command runs."""
    for table in ("source", "state"):
        section = raw.get(table)
        if isinstance(section, dict) and isinstance(section.get("url"), str):
            section["url"] = absolute_sqlite_url(section["url"], base)
    state = raw.get("state")
    if isinstance(state, dict) and isinstance(state.get("key_file"), str) and state["key_file"]:
        path = Path(state["key_file"]).expanduser()
        state["key_file"] = str(path if path.is_absolute() else base / path)


def absolute_sqlite_url(url: str, base: Path) -> str:
    """``url`` with a relative SQLite file made absolute against ``base``; any other URL (an
    in-memory SQLite one, another database, one that does not parse) as it is."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    database = parsed.database or ""
    if parsed.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return url
    prefix = ""
    if database.startswith("file:"):   # the URI form: file:path?mode=...&uri=true
        if parsed.query.get("mode") == "memory":
            return url
        prefix, database = "file:", database[5:]
    path = Path(database).expanduser()
    if path.is_absolute():
        return url
    return parsed.set(database=f"{prefix}{base / path}").render_as_string(hide_password=False)


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as a line a person can act on: ``[blux] application_id is missing``."""
    loc = ["schema" if part == "schema_" else str(part) for part in error["loc"]]
    kind = str(error["type"])
    ctx = error.get("ctx") or {}
    message = {
        "missing": "is missing",
        "extra_forbidden": "is not a known key (check the spelling)",
        "less_than_equal": f"must be at most {ctx.get('le')}",
        "less_than": f"must be less than {ctx.get('lt')}",
        "greater_than_equal": f"must be at least {ctx.get('ge')}",
        "greater_than": f"must be more than {ctx.get('gt')}",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "string_type": "must be a string",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "model_type": "must be a table",
        "dict_type": "must be a table",
        "model_attributes_type": "must be a table",
    }.get(kind) or str(error["msg"]).removeprefix("Value error, ")
    if kind == "literal_error":
        message = f"must be one of {ctx.get('expected')}"
    if kind == "extra_forbidden" and loc[:2] == ["mapping", "user_properties"]:
        message += ("; Blux's user properties are phone_number, email_address and the six "
                    "consents; anything else goes in [mapping.custom_user_properties]")
    if not loc:
        return message
    if len(loc) == 1:
        if kind == "missing":
            return f"[{loc[0]}] table is missing"
        if kind == "extra_forbidden":
            return f"[{loc[0]}] is not a known table (check the spelling)"
        return f"[{loc[0]}] {message}"
    head = loc[:-1]
    entry = next((i for i, part in enumerate(head) if part.isdigit()), None)
    if entry is not None:   # an array of tables: [[source.tables]] entry 2: key is missing
        rest = " ".join(head[entry + 1:])
        return (f"[[{'.'.join(head[:entry])}]] entry {int(head[entry]) + 1}"
                f"{' ' + rest if rest else ''}: {loc[-1]} {message}")
    return f"[{'.'.join(head)}] {loc[-1]} {message}"


# The API secrets: commands that send nothing (status, plan, migrate, outbox) do without them.
_API_SECRETS: Final = (("blux", "secret_key"), ("nachocode", "api_key"),
                       ("nachocode", "secret_key"))
NOT_LOADED: Final = "(not loaded: this command sends nothing)"


def _without_api_secrets(data: dict[str, Any], problems: list[str]) -> list[str]:
    kept = list(problems)
    for table, key in _API_SECRETS:
        section = data.get(table)
        if not isinstance(section, dict):
            continue
        mentions = (f"[{table}] {key}", f"[{table}] {key}_file")
        if not section.get(key) or any(p.startswith(mentions) for p in kept):
            section[key] = NOT_LOADED
            kept = [p for p in kept if not p.startswith(mentions)]
    return kept


def parse(raw: Mapping[str, Any], *, path: str = "<config>", env: Mapping[str, str] | None = None,
          base_dir: Path | None = None, secrets: bool = True) -> Config:
    """Validate an already-read TOML document. Raises ConfigError listing every problem.
    ``secrets=False`` (commands that send nothing) lets the API secrets be absent."""
    problems: list[str] = []
    data: dict[str, Any] = _walk(dict(raw), "", os.environ if env is None else env, problems)
    base = Path(os.path.abspath(base_dir or Path.cwd()))
    _read_secret_files(data, base, problems)
    _resolve_paths(data, base)
    if not secrets:
        problems = _without_api_secrets(data, problems)
    config: Config | None = None
    unset = {p.split(": environment variable", 1)[0] for p in problems
             if ": environment variable" in p}
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            line = _describe(err)
            if not any(line.startswith(key + " ") for key in unset):  # already explained
                problems.append(line)
    if problems:
        raise ConfigError(sorted(dict.fromkeys(problems)), path=path)
    assert config is not None
    _check_finite(config, path)
    return config


def _check_finite(config: Config, path: str) -> None:
    for name, value in (("[schedule] interval_seconds", config.schedule.interval_seconds),
                        ("[capture] lookback_seconds", config.capture.lookback_seconds)):
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number", path=path)


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    if path:
        return Path(path)
    return Path(os.environ.get(ENV_PATH) or DEFAULT_PATH)


def load(path: str | os.PathLike[str] | None = None,
         env: Mapping[str, str] | None = None, *, secrets: bool = True) -> Config:
    """Read and validate the config file (``-c``, then ``$SYNCER_CONFIG``, then /etc/syncer)."""
    file = resolve_path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            "no such file; pass -c PATH or set SYNCER_CONFIG (see config.example.toml)",
            path=str(file),
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read it ({exc.strerror})", path=str(file)) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=str(file)) from None
    return parse(raw, path=str(file), env=env, base_dir=file.parent, secrets=secrets)
