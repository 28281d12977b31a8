"""Calling the sandbox in-process, for the tests of each of its parts."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from syncer.sandbox import (
    SandboxApp,
    SandboxConfig,
    SandboxResponse,
)

CFG = SandboxConfig()
UPDATE = f"/blux/v2/applications/{CFG.blux_application_id}/users/update-properties/bulk"
DELETE = f"/blux/v2/applications/{CFG.blux_application_id}/users/delete/bulk"
WITHDRAW = "/nachocode/api/app-user/v2"
BLUX_HEADERS = {"Authorization": CFG.blux_secret_key, "Content-Type": "application/json"}
NACHO_HEADERS = {
    "x-api-key": CFG.nachocode_api_key,
    "x-secret-key": CFG.nachocode_secret_key,
    "Content-Type": "application/json",
}
PHONE = "01099998888"
EMAIL = "very.private@example.com"
FULL_PROPERTIES: dict[str, object] = {
    "phone_number": PHONE,
    "email_address": EMAIL,
    "nighttime_notification_consent": False,
    "marketing_notification_consent": True,
    "marketing_notification_sms_consent": True,
    "marketing_notification_email_consent": False,
    "marketing_notification_kakao_consent": True,
    "marketing_notification_push_consent": False,
}


def call(
    app: SandboxApp,
    path: str,
    payload: object = None,
    *,
    method: str = "POST",
    headers: Mapping[str, str] = BLUX_HEADERS,
    now: float = 0.0,
    raw: bytes | None = None,
) -> SandboxResponse:
    body = raw if raw is not None else json.dumps(payload).encode()
    return app.handle(method, path, headers, body, now)


def update(app: SandboxApp, users: list[Any], now: float = 0.0) -> SandboxResponse:
    return call(app, UPDATE, {"users": users}, now=now)


def delete(app: SandboxApp, ids: list[Any], now: float = 0.0) -> SandboxResponse:
    return call(app, DELETE, {"user_ids": ids}, now=now)


def withdraw(
    app: SandboxApp,
    user_id: object,
    now: float = 0.0,
    method: str = "DELETE",
    headers: Mapping[str, str] = NACHO_HEADERS,
) -> SandboxResponse:
    return call(app, WITHDRAW, {"userId": user_id}, method=method, headers=headers, now=now)


def message(response: SandboxResponse) -> str:
    assert isinstance(response.body, dict)
    text = response.body["message"]
    assert isinstance(text, str)
    return text


def snapshot(app: SandboxApp) -> dict[str, Any]:
    return app.snapshot()


def brute_force_max(times: list[float], width: float) -> int:
    return max((sum(1 for u in times if t - width < u <= t) for t in times), default=0)


def envelope(response: SandboxResponse) -> dict[str, object]:
    assert isinstance(response.body, dict)
    assert set(response.body) == {"statusCode", "path", "code", "message"}
    assert response.body["statusCode"] == response.status
    assert response.body["path"] == "/api/app-user/v2"
    return response.body
