"""From a source row to the Blux payload, its fingerprint and its per-field tags. Pure.

The fingerprint (16 bytes, keyed BLAKE2b over the canonical JSON of the payload) decides whether a
user is sent. The field tags (2 bytes a field) only serve to *name* which fields changed in
``syncer plan``; 16 bits cannot give a value back, so the state holds no personal data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Final

from syncer import normalize
from syncer.config import Config, MappingConfig
from syncer.model import BluxPayload, FieldProblem, RawRow, UserRecord
from syncer.normalize import Invalid, JsonScalar

# Bump when a normaliser changes what it produces: the database-side row hashes then no longer
# vouch for the payloads, and the next reconcile looks at every row once (sending only real
# changes).
NORMALISATION_VERSION: Final = 1

_PROPERTY_NORMALISERS: Final[dict[str, Callable[[object], JsonScalar]]] = {
    "phone_number": normalize.phone_number,
    "email_address": normalize.email_address,
    "nighttime_notification_consent": normalize.consent,
    "marketing_notification_consent": normalize.consent,
    "marketing_notification_sms_consent": normalize.consent,
    "marketing_notification_email_consent": normalize.consent,
    "marketing_notification_kakao_consent": normalize.consent,
    "marketing_notification_push_consent": normalize.consent,
}
CONSENTS: Final = frozenset(k for k, f in _PROPERTY_NORMALISERS.items() if f is normalize.consent)
_ABSENT: Final = b"\x00\x00"


def _scalar_bytes(value: JsonScalar) -> bytes:
    """A JSON scalar as bytes that differ whenever the value (or its type) does."""
    if isinstance(value, bool):
        return b"T" if value else b"F"
    if isinstance(value, int):
        return b"i" + str(value).encode()
    if isinstance(value, float):
        return b"f" + repr(value).encode()
    return b"s" + value.encode()


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def identity_of(column: str, value: object) -> int | None:
    """Who holds a key, from the column that changes when a key is reused by another person
    (``[capture] created_column``): a hash of its value as a point in time, so that the session's
    time zone, the driver or a new fingerprint key do not make the same person look new. None for
    NULL and values that cannot be read."""
    if value is None or isinstance(value, normalize.Unreadable):
        return None
    if isinstance(value, dt.datetime):
        text = (value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
                ).isoformat()
    elif isinstance(value, dt.date):
        text = value.isoformat()
    elif isinstance(value, bytes):
        text = value.hex()
    else:
        text = str(value).strip()
    digest = hashlib.blake2b(f"{column}\x00{text}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class Mapping:
    """Builds :class:`UserRecord` values from raw rows for one mapping and one state salt."""

    def __init__(self, config: MappingConfig, salt: bytes,
                 created_column: str | None = None) -> None:
        self.created_column = created_column
        self.user_properties = config.user_property_columns()
        self.custom_properties = dict(config.custom_user_properties)
        self.null_consents_false = config.null_consents == "false"
        # Source columns whose empty (or blank) text means NULL ([mapping] empty_as_null).
        self.empty_as_null: frozenset[str] = frozenset(
            config.columns() if config.empty_as_null is True else config.empty_as_null or ())
        self._config = config.model_dump(mode="json")
        self.columns = config.columns()
        if created_column and created_column not in self.columns:
            self.columns.append(created_column)
        self._salt = salt
        # Field order of the tags: every mapped field by display name, sorted.
        self.fields: tuple[str, ...] = tuple(
            sorted([*self.user_properties, *(f"custom.{k}" for k in self.custom_properties)])
        )
        # Tags: a keyed 2-byte hash of each field's name and value. The layout names the fields
        # and the encoding (v2: a byte form per scalar type, no JSON), so tags of another
        # mapping or encoding are never compared.
        self._layout = hashlib.blake2b(_canonical(["tags-v2", *self.fields]),
                                       digest_size=2).digest()
        self._tagger = hashlib.blake2b(key=salt, digest_size=2)
        self._tag_names = {name: name.encode() + b"\x00" for name in self.fields}

    @classmethod
    def for_config(cls, config: Config, salt: bytes) -> Mapping:
        return cls(config.mapping, salt, config.capture.created_column)

    def row_hash_seed(self, destinations: Iterable[str] = ()) -> int:
        """A 63-bit secret naming this key, mapping, normalisation and set of destinations:
        seeds the database row hashes, so they change when any of those does (a destination
        added later sees every row once), and cannot be tested without the key."""
        digest = hashlib.blake2b(
            _canonical([NORMALISATION_VERSION, self._config, sorted(destinations)]),
            key=self._salt, digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def record(self, row: RawRow) -> UserRecord:
        """Raises :class:`normalize.Invalid` when the key cannot be a Blux user_id.

        A row whose soft-delete column cannot be read is neither alive nor deleted: it comes
        back with ``unreadable`` set and no payload. A mapped value that cannot be read is a
        field problem like any value that cannot be normalised: left out and reported."""
        uid = normalize.user_id(row.key)
        if row.unreadable:
            return UserRecord(uid, row.key, row.row_hash, deleted=False,
                              unreadable=f"{', '.join(row.unreadable)} holds a value the "
                                         "database cannot hand back")
        identity = self.identity(row.values) if row.values is not None else None
        if row.deleted or row.values is None:
            return UserRecord(uid, row.key, row.row_hash, deleted=row.deleted, identity=identity)
        problems: list[FieldProblem] = []
        props = self._normalise(self.user_properties, row.values, problems, "")
        custom = self._normalise(self.custom_properties, row.values, problems, "custom.")
        return UserRecord(uid, row.key, row.row_hash, False, self.payload(props, custom),
                          tuple(problems), identity)

    def identity(self, values: dict[str, object]) -> int | None:
        """:func:`identity_of` the row's ``[capture] created_column`` (None when not
        configured)."""
        if self.created_column is None:
            return None
        return identity_of(self.created_column, values.get(self.created_column))

    def _normalise(self, fields: dict[str, str], values: dict[str, object],
                   problems: list[FieldProblem], prefix: str) -> list[tuple[str, JsonScalar]]:
        out: list[tuple[str, JsonScalar]] = []
        for name, column in fields.items():
            raw = values.get(column)
            if isinstance(raw, str) and column in self.empty_as_null and not raw.strip():
                raw = None
            no_means_false = self.null_consents_false and not prefix and name in CONSENTS
            if raw is None:
                if no_means_false:
                    out.append((name, False))
                continue
            normaliser = _PROPERTY_NORMALISERS.get(name, normalize.custom) if not prefix \
                else normalize.custom
            try:
                out.append((name, normaliser(raw)))
            except Invalid as exc:
                problems.append(FieldProblem(prefix + name, str(exc)))
                if no_means_false:
                    out.append((name, False))
        out.sort()
        return out

    def payload(self, props: list[tuple[str, JsonScalar]],
                custom: list[tuple[str, JsonScalar]]) -> BluxPayload:
        fingerprint = hashlib.blake2b(
            _canonical([props, custom]), key=self._salt, digest_size=16
        ).digest()
        present = dict(props)
        present.update((f"custom.{k}", v) for k, v in custom)
        tags = bytearray(self._layout)
        for name in self.fields:
            if name in present:
                hasher = self._tagger.copy()
                hasher.update(self._tag_names[name])
                hasher.update(_scalar_bytes(present[name]))
                tag = hasher.digest()
                tags += tag if tag != _ABSENT else b"\x00\x01"
            else:
                tags += _ABSENT
        return BluxPayload(tuple(props), tuple(custom), fingerprint, bytes(tags))

    def changed_fields(self, old_tags: bytes | None, new: BluxPayload) -> tuple[str, ...] | None:
        """Names of the fields that differ from what was delivered; None when it cannot tell."""
        if old_tags is None or old_tags[:2] != self._layout or len(old_tags) != len(new.field_tags):
            return None
        return tuple(
            name for i, name in enumerate(self.fields)
            if old_tags[2 + 2 * i: 4 + 2 * i] != new.field_tags[2 + 2 * i: 4 + 2 * i]
        )

    def is_consent_withdrawal(self, changed: tuple[str, ...] | None, new: BluxPayload) -> bool:
        """A consent that changed and is now false: it goes out before other updates."""
        if not changed:
            return False
        props = dict(new.user_properties)
        return any(name in CONSENTS and props.get(name) is False for name in changed)
