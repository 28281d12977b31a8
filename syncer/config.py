"""The TOML configuration, parsed once into a frozen, typed tree.

Every problem is reported at once, each with its TOML path (``[blux] application_id is missing``);
unknown keys are errors, so a typo cannot silently switch a feature off. ``${VAR}`` is replaced from
the environment and a secret can be given as ``<key>_file`` (systemd credentials).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from syncer.secret import Secret, redact_url, url_secrets

# Documented limits (the Blux and nachocode API documents): more than this per request is
# refused by the API.
BLUX_UPDATE_MAX_BATCH: Final = 100
BLUX_DELETE_MAX_BATCH: Final = 3000
BLUX_UPDATE_RATE: Final = 20.0
BLUX_DELETE_RATE: Final = 100.0
NACHOCODE_DEFAULT_RATE: Final = 10.0

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


class SourceTable(_Model):
    """One table a ``[source] query`` reads (``[[source.tables]]``): the first entry is the users
    table itself (a row deleted there is a deleted user), the others are joined to it (a row
    deleted there is a change of that user)."""

    name: Identifier
    key: Identifier                      # the column holding the user key in this table
    watermark_column: Identifier | None = None


class SourceConfig(_Model):
    url: str
    table: Identifier | None = None
    schema_: Identifier | None = Field(default=None, alias="schema")
    query: str | None = None
    primary_key: Identifier = "id"
    chunk_size: int = Field(default=5000, ge=100, le=50_000)
    tables: tuple[SourceTable, ...] = ()

    @model_validator(mode="after")
    def _table_or_query(self) -> SourceConfig:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of `table` or `query`")
        if self.query is not None and self.schema_ is not None:
            raise ValueError("`schema` goes with `table`, not with `query`")
        if self.tables and self.query is None:
            raise ValueError("[[source.tables]] goes with `query` (the tables the query reads); "
                             "with `table`, that table is the whole source")
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ValueError("[[source.tables]] names a table twice")
        return self

    @property
    def watermarks(self) -> dict[str, str]:
        """Table -> its ``watermark_column``, for the tables that name one."""
        return {t.name: t.watermark_column for t in self.tables if t.watermark_column}

    @property
    def redacted_url(self) -> str:
        return redact_url(self.url)


CaptureMode = Literal["watermark", "outbox", "snapshot"]


def _soft_delete(value: object) -> object:
    """A column, or an SQL expression over the source's columns (``NOT is_active``)."""
    if not isinstance(value, str) or _IDENT.match(value):
        return value
    if not value.strip():
        raise ValueError("is empty")
    if any(bad in value for bad in (";", "--", "/*")):
        raise ValueError("must be a column or one SQL expression (no `;` or comments)")
    return value.strip()


def is_column(name: str) -> bool:
    """Whether a configured name is a plain column (not an SQL expression)."""
    return bool(_IDENT.match(name))


class CaptureConfig(_Model):
    mode: CaptureMode = "snapshot"
    watermark_column: Identifier | None = None
    # A column (true, a date or a timestamp mean deleted) or an SQL expression over the source's
    # columns, such as "NOT is_active" ("inactive means withdraw").
    soft_delete_column: Annotated[str | None, BeforeValidator(_soft_delete)] = None
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
        if self.created_column and self.created_column in (self.watermark_column,
                                                           self.soft_delete_column):
            raise ValueError("`created_column` must be a column that changes only when a key is "
                             "reused by another person (created_at, date_joined), not the "
                             "watermark or soft-delete column: every change would then delete "
                             "and re-create the user")
        return self


class ScheduleConfig(_Model):
    interval_seconds: float = Field(default=30.0, gt=0)
    max_pass_seconds: float = Field(default=600.0, gt=0)
    # How often the outbox is looked at for new rows (outbox mode): a burst of commits within
    # it wakes one pass, which then shares requests.
    gather_seconds: float = Field(default=0.25, gt=0, le=1.0)


class StateConfig(_Model):
    url: str = "sqlite:////var/lib/syncer/state.db"
    key_file: str | None = None
    # The pass history kept (rows of syncer_passes); older passes are pruned after each pass.
    keep_passes: int = Field(default=10_000, ge=100)
    # The audit trail kept (rows of syncer_history), in days; 0 keeps none (and writes none).
    history_days: int = Field(default=400, ge=0)

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
    # An empty (or blank) text is NULL: true for every mapped column, or a list of the source
    # columns it applies to (Django stores a missing e-mail as '').
    empty_as_null: bool | list[Identifier] = False

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
    def _capture_fits_source(self) -> Config:
        capture, source = self.capture, self.source
        if capture.mode == "watermark" and not (capture.watermark_column or source.watermarks):
            raise ValueError('[capture] mode = "watermark" needs `watermark_column` (or a '
                             "`watermark_column` on a [[source.tables]] entry)")
        if capture.mode == "watermark" and capture.watermark_column and source.watermarks:
            raise ValueError("[capture] watermark_column and [[source.tables]] watermark_column "
                             "both given: with [[source.tables]], name the watermark column on "
                             "each table entry")
        if isinstance(self.mapping.empty_as_null, list):
            unknown = [c for c in self.mapping.empty_as_null if c not in self.mapping.columns()]
            if unknown:
                raise ValueError(f"[mapping] empty_as_null names {', '.join(unknown)}, which "
                                 "no [mapping.*] entry maps")
        return self

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
        soft = self.capture.soft_delete_column
        if soft and is_column(soft):
            owners[soft] = "[capture] soft_delete_column"
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
