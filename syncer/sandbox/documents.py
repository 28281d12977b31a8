"""The request bodies the two API documents describe, checked as strictly as the documents say.
Messages name fields by path and user index and never echo a value, so they can be logged."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Final

MAX_UPDATE_USERS: Final = 100
MAX_DELETE_IDS: Final = 3000
CONSENT_KEYS: Final = frozenset(
    {
        "nighttime_notification_consent",
        "marketing_notification_consent",
        "marketing_notification_sms_consent",
        "marketing_notification_email_consent",
        "marketing_notification_kakao_consent",
        "marketing_notification_push_consent",
    }
)
USER_PROPERTY_KEYS: Final = frozenset({"phone_number", "email_address"}) | CONSENT_KEYS
USER_KEYS: Final = frozenset({"user_id", "user_properties", "custom_user_properties"})

_DIGITS = re.compile(r"[0-9]+")



class Invalid(Exception):
    """A request body the API would refuse; the message is safe to show and log."""


@dataclass(frozen=True, slots=True)
class UserUpdate:
    user_id: str
    user_properties: dict[str, object]
    custom_user_properties: dict[str, object]


def _reject_constant(name: str) -> object:
    raise Invalid(f"the body is not valid JSON ({name} is not a JSON value)")


def _unique_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if key in result:
            raise Invalid(f"the body repeats the key {_name(key)} in one object")
        result[key] = value
    return result


def parse_json(body: bytes) -> object:
    if not body:
        raise Invalid("the body is empty; a JSON object is required")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise Invalid("the body is not valid UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        message = f"the body is not valid JSON (line {exc.lineno}, column {exc.colno})"
        raise Invalid(message) from None
    except ValueError:  # e.g. an integer longer than Python's digit limit
        raise Invalid("the body is not valid JSON (a number is out of range)") from None
    except RecursionError:
        raise Invalid("the body is nested too deeply") from None


def _name(key: str) -> str:
    """A key for a message: quoted and cut short (keys are field names, never values)."""
    return repr(key if len(key) <= 40 else key[:40] + "...")


def _only_keys(obj: dict[str, object], allowed: frozenset[str], where: str) -> None:
    for key in obj:
        if key not in allowed:
            raise Invalid(f"{where} has the unknown key {_name(key)}")


def validate_update(document: object) -> list[UserUpdate]:
    if not isinstance(document, dict):
        raise Invalid('the body must be a JSON object {"users": [...]}')
    _only_keys(document, frozenset({"users"}), "the body")
    if "users" not in document:
        raise Invalid("users is required")
    users = document["users"]
    if not isinstance(users, list):
        raise Invalid("users must be an array")
    if not 1 <= len(users) <= MAX_UPDATE_USERS:
        raise Invalid(f"users must hold 1 to {MAX_UPDATE_USERS} users, not {len(users)}")
    seen: dict[str, int] = {}
    result: list[UserUpdate] = []
    for index, user in enumerate(users):
        where = f"users[{index}]"
        if not isinstance(user, dict):
            raise Invalid(f"{where} must be an object")
        _only_keys(user, USER_KEYS, where)
        user_id = _user_id(user, where)
        if user_id in seen:
            raise Invalid(f"{where}.user_id repeats users[{seen[user_id]}].user_id")
        seen[user_id] = index
        properties: dict[str, object] = {}
        if "user_properties" in user:
            properties = _user_properties(user["user_properties"], f"{where}.user_properties")
        custom: dict[str, object] = {}
        if "custom_user_properties" in user:
            custom = _custom_properties(
                user["custom_user_properties"], f"{where}.custom_user_properties"
            )
        result.append(UserUpdate(user_id, properties, custom))
    return result


def _user_id(user: dict[str, object], where: str) -> str:
    if "user_id" not in user:
        raise Invalid(f"{where}.user_id is required")
    user_id = user["user_id"]
    if not isinstance(user_id, str):
        raise Invalid(f"{where}.user_id must be a string")
    if not user_id:
        raise Invalid(f"{where}.user_id must not be empty")
    return user_id


def _user_properties(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object")
    _only_keys(value, USER_PROPERTY_KEYS, where)
    for key, item in value.items():
        if key in CONSENT_KEYS:
            if not isinstance(item, bool):
                raise Invalid(f"{where}.{key} must be true or false")
        elif not isinstance(item, str):
            raise Invalid(f"{where}.{key} must be a string")
        elif key == "phone_number" and not _DIGITS.fullmatch(item):
            raise Invalid(f"{where}.phone_number must be digits only (e.g. 01012345678)")
        elif key == "email_address":
            local, at, domain = item.partition("@")
            if not (at and local and domain) or "@" in domain:
                raise Invalid(f"{where}.email_address must be an e-mail address (one '@')")
    return dict(value)


def _custom_properties(value: object, where: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise Invalid(f"{where} must be an object")
    for key, item in value.items():
        if not key:
            raise Invalid(f"{where} has an empty key")
        if isinstance(item, float) and not math.isfinite(item):
            raise Invalid(f"{where}[{_name(key)}] must be a finite number")
        if not isinstance(item, str | int | float | bool):
            raise Invalid(f"{where}[{_name(key)}] must be a string, a number or a boolean")
    return dict(value)


def validate_delete(document: object) -> list[str]:
    if not isinstance(document, dict):
        raise Invalid('the body must be a JSON object {"user_ids": [...]}')
    _only_keys(document, frozenset({"user_ids"}), "the body")
    if "user_ids" not in document:
        raise Invalid("user_ids is required")
    ids = document["user_ids"]
    if not isinstance(ids, list):
        raise Invalid("user_ids must be an array")
    if not 1 <= len(ids) <= MAX_DELETE_IDS:
        raise Invalid(f"user_ids must hold 1 to {MAX_DELETE_IDS} ids, not {len(ids)}")
    result: list[str] = []
    for index, user_id in enumerate(ids):
        if not isinstance(user_id, str):
            raise Invalid(f"user_ids[{index}] must be a string")
        if not user_id:
            raise Invalid(f"user_ids[{index}] must not be empty")
        result.append(user_id)
    return result


def validate_withdraw(document: object) -> str:
    if not isinstance(document, dict):
        raise Invalid("the body must be a JSON object {userId}")
    _only_keys(document, frozenset({"userId"}), "the body")
    if "userId" not in document:
        raise Invalid("userId is required")
    user_id = document["userId"]
    if isinstance(user_id, bool) or not isinstance(user_id, str | int):
        raise Invalid("userId must be a string or an integer")
    if isinstance(user_id, str) and not user_id:
        raise Invalid("userId must not be empty")
    return str(user_id)
