"""The TOML configuration, parsed once into a frozen, typed tree.

Every problem is reported at once, each with its TOML path (``[blux] application_id is missing``);
unknown keys are errors, so a typo cannot silently switch a feature off. ``${VAR}`` is replaced from
the environment and a secret can be given as ``<key>_file`` (systemd credentials).
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from syncer.errors import ConfigError
from syncer.secret import Secret, redact_url, url_secrets

DEFAULT_PATH: Final = "/etc/syncer/config.toml"
ENV_PATH: Final = "SYNCER_CONFIG"

# Documented limits (shared/api): more than this per request is refused by the API.
BLUX_UPDATE_MAX_BATCH: Final = 100
BLUX_DELETE_MAX_BATCH: Final = 3000
BLUX_UPDATE_RATE: Final = 20.0
BLUX_DELETE_RATE: Final = 100.0
NACHOCODE_DEFAULT_RATE: Final = 10.0

# Keys that may be given as ``<key>_file`` instead, per table.
_FILE_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "source": ("url",),
    "state": ("url",),
    "blux": ("secret_key",),
    "nachocode": ("api_key", "secret_key"),
}

# No `$`: it would clash with dollar quoting in the generated PostgreSQL trigger function.
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _to_secret(value: object) -> object:
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if not value.strip():
        raise ValueError("is empty")
    return Secret(value.strip())


SecretField = Annotated[Secret, BeforeValidator(_to_secret)]


def _identifier(value: str) -> str:
    if not _IDENT.match(value):
        raise ValueError("must be a plain SQL identifier (letters, digits and underscores, not "
                         "starting with a digit; no `$`, spaces or quotes)")
    return value


Identifier = Annotated[str, BeforeValidator(lambda v: _identifier(v) if isinstance(v, str) else v)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class SourceConfig(_Model):
    url: str
    table: Identifier | None = None
    schema_: Identifier | None = Field(default=None, alias="schema")
    query: str | None = None
    primary_key: Identifier = "id"
    chunk_size: int = Field(default=5000, ge=100, le=50_000)

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        if self.query is not None and self.schema_ is not None:
            raise ValueError("`schema` goes with `table`, not with `query`")
        return self

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


CaptureMode = Literal["watermark", "outbox", "snapshot"]


class CaptureConfig(_Model):
    mode: CaptureMode = "snapshot"
    watermark_column: Identifier | None = None
    soft_delete_column: Identifier | None = None
    # A column that changes when a key is reused by another person (created_at, date_joined):
    # a change means the user was deleted and re-created, so the destinations forget the
    # previous person before the new one is sent.
    created_column: Identifier | None = None
    lookback_seconds: float = Field(default=300.0, ge=0)
    outbox_table: Identifier = "syncer_outbox"
    reconcile_cron: str | None = "0 4 * * *"
    max_delete_fraction: float = Field(default=0.05, ge=0, le=1)
    max_delete_floor: int = Field(default=10, ge=0)
    initial_deletions: Literal["skip", "send"] = "skip"
    listen_notify: bool = True

    @field_validator("reconcile_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value, timezone="UTC")
        except ValueError as exc:
            raise ValueError(f"is not a crontab expression ({exc})") from None
        return value

    @model_validator(mode="after")
    def _mode_needs(self) -> CaptureConfig:
        if self.mode == "watermark" and not self.watermark_column:
            raise ValueError("mode = \"watermark\" needs `watermark_column`")
        return self


class ScheduleConfig(_Model):
    interval_seconds: float = Field(default=30.0, gt=0)
    max_pass_seconds: float = Field(default=600.0, gt=0)


class StateConfig(_Model):
    url: str = "sqlite:////var/lib/syncer/state.db"
    key_file: str | None = None
    # The pass history kept (rows of syncer_passes); older passes are pruned after each pass.
    keep_passes: int = Field(default=10_000, ge=100)

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


class UserPropertiesMapping(_Model):
    """Blux ``user_properties`` (the documented keys only) = source column."""

    phone_number: Identifier | None = None
    email_address: Identifier | None = None
    nighttime_notification_consent: Identifier | None = None
    marketing_notification_consent: Identifier | None = None
    marketing_notification_sms_consent: Identifier | None = None
    marketing_notification_email_consent: Identifier | None = None
    marketing_notification_kakao_consent: Identifier | None = None
    marketing_notification_push_consent: Identifier | None = None


class MappingConfig(_Model):
    user_properties: UserPropertiesMapping = UserPropertiesMapping()
    custom_user_properties: dict[str, Identifier] = Field(default_factory=dict)
    # "omit": a NULL consent is left out (Blux keeps its last value); "false": a NULL or
    # unreadable consent is sent as false (no consent unless the source says yes).
    null_consents: Literal["omit", "false"] = "omit"

    @field_validator("custom_user_properties")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not name.strip():
                raise ValueError("a custom property name may not be empty")
        return value

    def user_property_columns(self) -> dict[str, str]:
        return {k: v for k, v in self.user_properties.model_dump().items() if v is not None}

    def owners(self) -> dict[str, str]:
        """Source column -> the config key that names it (for messages)."""
        out: dict[str, str] = {}
        for name, col in self.user_property_columns().items():
            out.setdefault(col, f"[mapping.user_properties] {name}")
        for name, col in self.custom_user_properties.items():
            out.setdefault(col, f"[mapping.custom_user_properties] {name}")
        return out

    def columns(self) -> list[str]:
        """Every source column the mapping reads, each once, in a stable order."""
        seen: dict[str, None] = {}
        for col in [*self.user_property_columns().values(), *self.custom_user_properties.values()]:
            seen.setdefault(col, None)
        return list(seen)


class DestinationTuning(_Model):
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_in_flight: int | None = Field(default=None, ge=1, le=256)


class BluxConfig(DestinationTuning):
    base_url: str = "https://api.blux.ai/prod"
    application_id: str
    secret_key: SecretField
    update_batch_size: int = Field(default=BLUX_UPDATE_MAX_BATCH, ge=1, le=BLUX_UPDATE_MAX_BATCH)
    update_rate: float = Field(default=BLUX_UPDATE_RATE, gt=0, le=10_000)
    delete_batch_size: int = Field(default=BLUX_DELETE_MAX_BATCH, ge=1, le=BLUX_DELETE_MAX_BATCH)
    delete_rate: float = Field(default=BLUX_DELETE_RATE, gt=0, le=10_000)

    @field_validator("application_id")
    @classmethod
    def _app_id(cls, value: str) -> str:
        if not value.strip() or "/" in value:
            raise ValueError("must be the application id Blux gave you (no slashes)")
        return value.strip()

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)


class NachocodeConfig(DestinationTuning):
    base_url: str = "https://app.nachocode.io"
    api_key: SecretField
    secret_key: SecretField
    method: Literal["DELETE", "POST"] = "DELETE"
    rate: float = Field(default=NACHOCODE_DEFAULT_RATE, gt=0, le=10_000)

    @field_validator("base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("method", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class DeliveryConfig(_Model):
    max_attempts: int = Field(default=5, ge=1, le=100)
    backoff_initial_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    retry_after_max_seconds: float = Field(default=60.0, gt=0)


class MetricsConfig(_Model):
    listen: str

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        parse_listen(value)
        return value


class Config(_Model):
    source: SourceConfig
    capture: CaptureConfig = CaptureConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    state: StateConfig = StateConfig()
    mapping: MappingConfig = MappingConfig()
    blux: BluxConfig | None = None
    nachocode: NachocodeConfig | None = None
    delivery: DeliveryConfig = DeliveryConfig()
    metrics: MetricsConfig | None = None

    @model_validator(mode="after")
    def _destinations(self) -> Config:
        if self.blux is None and self.nachocode is None:
            raise ValueError("configure at least one destination: [blux] or [nachocode]")
        if self.blux is not None and not self.mapping.columns():
            raise ValueError(
                "[mapping] maps no column: add [mapping.user_properties] or "
                "[mapping.custom_user_properties] so there is something to send to Blux"
            )
        return self

    def column_owners(self) -> dict[str, str]:
        owners = self.mapping.owners()
        owners[self.source.primary_key] = "[source] primary_key"
        if self.capture.soft_delete_column:
            owners[self.capture.soft_delete_column] = "[capture] soft_delete_column"
        if self.capture.created_column:
            owners.setdefault(self.capture.created_column, "[capture] created_column")
        if self.capture.watermark_column and self.capture.mode == "watermark":
            owners[self.capture.watermark_column] = "[capture] watermark_column"
        return owners

    def secret_values(self) -> tuple[str, ...]:
        """Every secret in this config, for scrubbing free text before it is logged."""
        values: list[str] = []
        if self.blux:
            values.append(self.blux.secret_key.reveal())
        if self.nachocode:
            values += [self.nachocode.api_key.reveal(), self.nachocode.secret_key.reveal()]
        for url in (self.source.url, self.state.url):
            values += url_secrets(url)
        return tuple(v for v in values if v)

    def warnings(self) -> list[str]:
        notes: list[str] = []
        if self.blux and self.blux.update_rate > BLUX_UPDATE_RATE:
            notes.append(
                f"[blux] update_rate = {self.blux.update_rate:g} is above the documented "
                f"{BLUX_UPDATE_RATE:g}/s: only do this under an agreement with Blux"
            )
        if self.blux and self.blux.delete_rate > BLUX_DELETE_RATE:
            notes.append(
                f"[blux] delete_rate = {self.blux.delete_rate:g} is above the documented "
                f"{BLUX_DELETE_RATE:g}/s: only do this under an agreement with Blux"
            )
        for name, api in (("blux", self.blux), ("nachocode", self.nachocode)):
            host = _cleartext_host(api.base_url) if api else None
            if host:
                notes.append(
                    f"[{name}] base_url is plain http:// to {host}: the API keys and the users' "
                    "data would cross the network unencrypted; use https://")
        if self.capture.mode != "snapshot" and self.capture.reconcile_cron is None:
            notes.append(
                "[capture] reconcile_cron is off: hard deletes are only caught by "
                "`syncer once --reconcile`"
            )
        return notes


def _cleartext_host(url: str) -> str | None:
    """The host of a plain ``http://`` URL that leaves this machine (None for https or a loopback
    address, where nothing crosses a network)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme.lower() != "http" or host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host


def _http_url(value: str) -> str:
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError('must be "host:port", e.g. "127.0.0.1:9464"')
    return host.strip("[]"), int(port)


# ----------------------------------------------------------------------------- loading


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
    return f"[{'.'.join(loc[:-1])}] {loc[-1]} {message}"


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
