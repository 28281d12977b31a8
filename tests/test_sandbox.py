"""The sandbox: both APIs as documented, the faults, the mirror, and its two shells."""

from __future__ import annotations

import _thread
import asyncio
import http.client
import json
import socket
import threading
import time
import tomllib
from collections.abc import Mapping
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.sandbox import (
    Faults,
    SandboxApp,
    SandboxConfig,
    SandboxResponse,
    SandboxServer,
    config_snippet,
    mock_transport,
    serve,
)
from syncer.sandbox.app import ArrivalWindow

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


# -- Blux: update ---------------------------------------------------------------------------------


def test_update_creates_the_user_and_answers_200() -> None:
    app = SandboxApp()
    user = {"user_id": "u1", "user_properties": FULL_PROPERTIES, "custom_user_properties": {"a": 1}}
    response = update(app, [user])
    assert response.status == 200
    assert response.endpoint == "blux.update"
    assert isinstance(response.body, dict)
    assert snapshot(app)["users"] == {
        "u1": {"user_properties": FULL_PROPERTIES, "custom_user_properties": {"a": 1}}
    }


def test_update_accepts_every_documented_shape() -> None:
    app = SandboxApp()
    users: list[Any] = [
        {"user_id": "only-id"},
        {"user_id": "empty", "user_properties": {}, "custom_user_properties": {}},
        {"user_id": "scalars", "custom_user_properties": {"s": "x", "i": 3, "f": 1.5, "b": True}},
    ]
    users += [{"user_id": f"u{i}"} for i in range(100 - len(users))]
    assert len(users) == 100
    assert update(app, users).status == 200
    assert len(snapshot(app)["users"]) == 100


def test_unknown_application_id_is_404_before_auth() -> None:
    app = SandboxApp()
    path = UPDATE.replace(CFG.blux_application_id, "someone-else")
    response = call(app, path, {"users": [{"user_id": "1"}]}, headers={})
    assert response.status == 404
    assert response.endpoint == "blux.update"


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "application/json"},
        {"Authorization": "wrong", "Content-Type": "application/json"},
        {"Authorization": f"Bearer {CFG.blux_secret_key}", "Content-Type": "application/json"},
        {"Authorization": f" {CFG.blux_secret_key}", "Content-Type": "application/json"},
    ],
)
def test_authorization_must_be_the_raw_secret(headers: dict[str, str]) -> None:
    app = SandboxApp()
    for path in (UPDATE, DELETE):
        response = call(app, path, {"user_ids": ["1"]}, headers=headers)
        assert response.status == 401
        assert CFG.blux_secret_key not in message(response)


def test_auth_is_checked_before_the_body() -> None:
    response = call(SandboxApp(), UPDATE, raw=b"not json", headers={"Authorization": "x"})
    assert response.status == 401


def test_header_names_are_case_insensitive() -> None:
    headers = {"AUTHORIZATION": CFG.blux_secret_key, "content-TYPE": "Application/JSON"}
    response = call(SandboxApp(), UPDATE, {"users": [{"user_id": "1"}]}, headers=headers)
    assert response.status == 200


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        (None, 400),
        ("text/plain", 400),
        ("application/x-www-form-urlencoded", 400),
        ("application/json", 200),
        ("application/json; charset=utf-8", 200),
        ("application/json;charset=UTF-8", 200),
    ],
)
def test_content_type_must_be_json(content_type: str | None, status: int) -> None:
    headers = {"Authorization": CFG.blux_secret_key}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = call(SandboxApp(), UPDATE, {"users": [{"user_id": "1"}]}, headers=headers)
    assert response.status == status
    if status == 400:
        assert "Content-Type" in message(response)


def _user(**fields: object) -> dict[str, object]:
    return {"user_id": "u", **fields}


BAD_UPDATES: list[tuple[object, str]] = [
    ([{"user_id": "u"}], "JSON object"),
    ({"users": [{"user_id": "u"}], "extra": 1}, "unknown key 'extra'"),
    ({}, "users is required"),
    ({"users": {"user_id": "u"}}, "users must be an array"),
    ({"users": []}, "1 to 100"),
    ({"users": [{"user_id": str(i)} for i in range(101)]}, "1 to 100"),
    ({"users": ["u"]}, "users[0] must be an object"),
    ({"users": [{"user_id": "a"}, {"name": "b"}]}, "users[1] has the unknown key 'name'"),
    ({"users": [{"user_id": "a"}, {}]}, "users[1].user_id is required"),
    ({"users": [{"user_id": 7}]}, "users[0].user_id must be a string"),
    ({"users": [{"user_id": ""}]}, "users[0].user_id must not be empty"),
    ({"users": [{"user_id": None}]}, "users[0].user_id must be a string"),
    ({"users": [{"user_id": "a"}, {"user_id": "b"}, {"user_id": "a"}]}, "users[2].user_id repeats"),
    ({"users": [_user(user_properties=[])]}, "users[0].user_properties must be an object"),
    ({"users": [_user(user_properties=None)]}, "users[0].user_properties must be an object"),
    ({"users": [_user(user_properties={"phone": PHONE})]}, "unknown key 'phone'"),
    ({"users": [_user(user_properties={"name": "x"})]}, "unknown key 'name'"),
    ({"users": [_user(user_properties={"phone_number": "010-9999-8888"})]}, "digits only"),
    ({"users": [_user(user_properties={"phone_number": "+821099998888"})]}, "digits only"),
    (
        {
            "users": [
                _user(
                    user_properties={"phone_number": "".join(chr(0xFF10 + int(d)) for d in PHONE)}
                )
            ]
        },
        "digits only",
    ),
    ({"users": [_user(user_properties={"phone_number": ""})]}, "digits only"),
    ({"users": [_user(user_properties={"phone_number": 1099998888})]}, "must be a string"),
    ({"users": [_user(user_properties={"email_address": "private.example.com"})]}, "one '@'"),
    ({"users": [_user(user_properties={"email_address": "pri@vate@example.com"})]}, "one '@'"),
    ({"users": [_user(user_properties={"email_address": "@example.com"})]}, "one '@'"),
    ({"users": [_user(user_properties={"email_address": "private@"})]}, "one '@'"),
    ({"users": [_user(user_properties={"email_address": None})]}, "must be a string"),
    (
        {"users": [_user(user_properties={"marketing_notification_consent": 1})]},
        "users[0].user_properties.marketing_notification_consent must be true or false",
    ),
    ({"users": [_user(user_properties={"nighttime_notification_consent": 0})]}, "true or false"),
    ({"users": [_user(user_properties={"marketing_notification_sms_consent": "true"})]}, "true"),
    ({"users": [_user(user_properties={"marketing_notification_push_consent": "Y"})]}, "true"),
    ({"users": [_user(user_properties={"marketing_notification_kakao_consent": None})]}, "true"),
    ({"users": [_user(custom_user_properties=[1])]}, "custom_user_properties must be an object"),
    ({"users": [_user(custom_user_properties={"k": None})]}, "['k'] must be a string, a number"),
    ({"users": [_user(custom_user_properties={"k": [1, 2]})]}, "['k'] must be a string, a number"),
    ({"users": [_user(custom_user_properties={"k": {"a": 1}})]}, "['k'] must be a string"),
    ({"users": [_user(custom_user_properties={"": 1})]}, "empty key"),
]


@pytest.mark.parametrize(("payload", "expected"), BAD_UPDATES)
def test_invalid_update_bodies_are_400_naming_the_field(payload: object, expected: str) -> None:
    app = SandboxApp()
    response = call(app, UPDATE, payload)
    assert response.status == 400
    text = message(response)
    assert expected in text
    for value in (PHONE, EMAIL, "010-9999-8888", "private", "8888"):
        assert value not in text
    assert snapshot(app)["users"] == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "empty"),
        (b"{users", "not valid JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"users": [{"user_id": "u", "custom_user_properties": {"x": NaN}}]}', "NaN"),
        (b'{"users": [{"user_id": "u", "custom_user_properties": {"x": Infinity}}]}', "Infinity"),
        (b'{"users": [{"user_id": "u", "custom_user_properties": {"x": 1e400}}]}', "finite"),
        (b'{"users": [{"user_id": "u", "user_id": "v"}]}', "repeats the key 'user_id'"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_json_is_400(raw: bytes, expected: str) -> None:
    response = call(SandboxApp(), UPDATE, raw=raw)
    assert response.status == 400
    assert expected in message(response)
    assert call(SandboxApp(), DELETE, raw=raw).status == 400


def test_an_invalid_user_refuses_the_whole_batch() -> None:
    app = SandboxApp()
    users: list[Any] = [{"user_id": str(i)} for i in range(10)]
    users[5]["user_properties"] = {"phone_number": "010-1"}
    response = update(app, users)
    assert response.status == 400
    assert "users[5].user_properties.phone_number" in message(response)
    assert snapshot(app)["users"] == {}


def test_update_merges_over_what_the_user_had() -> None:
    app = SandboxApp()
    first = {
        "user_id": "u",
        "user_properties": {"phone_number": PHONE, "marketing_notification_consent": True},
        "custom_user_properties": {"name": "Kim", "age": 30},
    }
    assert update(app, [first], now=0.0).status == 200
    second = {
        "user_id": "u",
        "user_properties": {"marketing_notification_consent": False, "email_address": EMAIL},
        "custom_user_properties": {"age": 31},
    }
    assert update(app, [second], now=0.1).status == 200
    assert update(app, [{"user_id": "u"}], now=0.2).status == 200
    assert snapshot(app)["users"]["u"] == {
        "user_properties": {
            "phone_number": PHONE,
            "marketing_notification_consent": False,
            "email_address": EMAIL,
        },
        "custom_user_properties": {"name": "Kim", "age": 31},
    }


# -- Blux: delete ---------------------------------------------------------------------------------


def test_delete_removes_users_and_lists_them() -> None:
    app = SandboxApp()
    update(app, [{"user_id": "a"}, {"user_id": "b"}])
    response = delete(app, ["b", "never-seen"], now=0.1)
    assert response.status == 200
    assert response.endpoint == "blux.delete"
    state = snapshot(app)
    assert list(state["users"]) == ["a"]
    assert state["deleted_user_ids"] == ["b", "never-seen"]


def test_update_after_delete_recreates_the_user() -> None:
    app = SandboxApp()
    update(app, [{"user_id": "a", "custom_user_properties": {"old": 1}}])
    delete(app, ["a", "z"], now=0.1)
    update(app, [{"user_id": "a", "custom_user_properties": {"new": 2}}], now=0.2)
    state = snapshot(app)
    assert state["deleted_user_ids"] == ["z"]
    assert state["users"]["a"] == {"user_properties": {}, "custom_user_properties": {"new": 2}}


def test_delete_accepts_3000_ids() -> None:
    assert delete(SandboxApp(), [f"id{i}" for i in range(3000)]).status == 200


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (["a"], "JSON object"),
        ({"user_ids": ["a"], "users": []}, "unknown key 'users'"),
        ({}, "user_ids is required"),
        ({"user_ids": "a"}, "user_ids must be an array"),
        ({"user_ids": []}, "1 to 3000"),
        ({"user_ids": [str(i) for i in range(3001)]}, "1 to 3000"),
        ({"user_ids": ["a", 2]}, "user_ids[1] must be a string"),
        ({"user_ids": ["a", "b", ""]}, "user_ids[2] must not be empty"),
        ({"user_ids": [None]}, "user_ids[0] must be a string"),
    ],
)
def test_invalid_delete_bodies_are_400(payload: object, expected: str) -> None:
    app = SandboxApp()
    update(app, [{"user_id": "a"}])
    response = call(app, DELETE, payload, now=0.1)
    assert response.status == 400
    assert expected in message(response)
    assert list(snapshot(app)["users"]) == ["a"]


def test_blux_routes_only_answer_post() -> None:
    app = SandboxApp()
    for method in ("GET", "PUT", "DELETE"):
        response = call(app, UPDATE, {"users": [{"user_id": "1"}]}, method=method)
        assert response.status == 404
        assert response.endpoint is None
    assert snapshot(app)["requests"]["blux.update"]["total"] == 0


# -- nachocode ------------------------------------------------------------------------------------


def envelope(response: SandboxResponse) -> dict[str, object]:
    assert isinstance(response.body, dict)
    assert set(response.body) == {"statusCode", "path", "code", "message"}
    assert response.body["statusCode"] == response.status
    assert response.body["path"] == "/api/app-user/v2"
    return response.body


@pytest.mark.parametrize("method", ["DELETE", "POST"])
def test_withdraw_then_already_withdrawn(method: str) -> None:
    app = SandboxApp()
    first = withdraw(app, "u1", method=method)
    assert first.status == 200
    assert first.body == {"message": "User withdrawal process successfully executed."}
    assert first.endpoint == "nachocode.withdraw"
    second = withdraw(app, "u1", now=0.1, method=method)
    assert second.status == 410
    assert envelope(second) == {
        "statusCode": 410,
        "path": "/api/app-user/v2",
        "code": "ERR-AB-ACS-22",
        "message": "User already withdrawn.",
    }


def test_a_number_and_its_digits_are_the_same_user() -> None:
    app = SandboxApp()
    assert withdraw(app, 42).status == 200
    assert withdraw(app, "42", now=0.1).status == 410
    assert withdraw(app, "7", now=0.2).status == 200
    assert withdraw(app, 7, now=0.3).status == 410
    assert snapshot(app)["withdrawn_user_ids"] == ["42", "7"]


@pytest.mark.parametrize(
    ("headers", "status", "code", "text"),
    [
        ({"x-secret-key": CFG.nachocode_secret_key}, 400, "ERR-AB-AGK-11", "Api key not found."),
        (
            {"x-api-key": "", "x-secret-key": CFG.nachocode_secret_key},
            400,
            "ERR-AB-AGK-11",
            "Api key not found.",
        ),
        ({}, 400, "ERR-AB-AGK-11", "Api key not found."),
        ({"x-api-key": CFG.nachocode_api_key}, 400, "ERR-AB-SGK-11", "Secret key not found."),
        (
            {"x-api-key": "nope", "x-secret-key": "nope"},
            404,
            "ERR-AB-KSY-13",
            "Provided key information not found. Please check your key again.",
        ),
        (
            {"x-api-key": CFG.nachocode_api_key, "x-secret-key": "nope"},
            401,
            "ERR-AB-SGK-13",
            "Incorrect secret key.",
        ),
    ],
)
def test_nachocode_key_errors(headers: dict[str, str], status: int, code: str, text: str) -> None:
    app = SandboxApp(faults=Faults(nachocode_disabled=True))
    response = withdraw(app, "u", headers={**headers, "Content-Type": "application/json"})
    assert response.status == status
    body = envelope(response)
    assert (body["code"], body["message"]) == (code, text)
    assert snapshot(app)["withdrawn_user_ids"] == []


def test_nachocode_header_names_are_case_insensitive() -> None:
    headers = {k.upper(): v for k, v in NACHO_HEADERS.items()}
    assert withdraw(SandboxApp(), "u", headers=headers).status == 200


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"userId=1",
        b'["u"]',
        b"{}",
        b'{"userId": ""}',
        b'{"userId": null}',
        b'{"userId": true}',
        b'{"userId": 1.5}',
        b'{"userId": 1e3}',
        b'{"userId": ["u"]}',
        b'{"userId": {"id": 1}}',
        b'{"userId": "u", "reason": "bye"}',
        b'{"user_id": "u"}',
    ],
)
def test_bad_withdraw_bodies_are_val_00(raw: bytes) -> None:
    app = SandboxApp(faults=Faults(nachocode_disabled=True))
    response = call(app, WITHDRAW, raw=raw, method="DELETE", headers=NACHO_HEADERS)
    assert response.status == 400
    body = envelope(response)
    assert body["code"] == "ERR-AB-VAL-00"
    assert body["message"] == "Incorrect request. Server cannot understand request."


def test_withdraw_without_json_content_type_is_val_00() -> None:
    headers = {k: v for k, v in NACHO_HEADERS.items() if k != "Content-Type"}
    response = withdraw(SandboxApp(), "u", headers=headers)
    assert response.status == 400
    assert envelope(response)["code"] == "ERR-AB-VAL-00"


def test_nachocode_disabled_is_403_and_withdraws_nothing() -> None:
    app = SandboxApp(faults=Faults(nachocode_disabled=True))
    response = withdraw(app, "u")
    assert response.status == 403
    assert envelope(response)["code"] == "ERR-AB-ACS-21"
    assert envelope(response)["message"] == "This app is unable to handle user preference."
    app.faults.nachocode_disabled = False
    assert withdraw(app, "u", now=0.1).status == 200


def test_nachocode_routes() -> None:
    app = SandboxApp()
    for method in ("GET", "PUT", "PATCH"):
        response = call(app, WITHDRAW, {"userId": 1}, method=method, headers=NACHO_HEADERS)
        assert response.status == 404
    assert call(app, "/nachocode/api/app-user/v1", {"userId": 1}, method="DELETE").status == 404
    assert call(app, "/api/app-user/v2", {"userId": 1}, method="DELETE").status == 404


# -- rate limits ----------------------------------------------------------------------------------


def test_blux_update_rate_limit_and_recovery() -> None:
    app = SandboxApp()
    for _ in range(20):
        assert update(app, [{"user_id": "u"}], now=0.0).status == 200
    limited = update(app, [{"user_id": "u"}], now=0.5)
    assert limited.status == 429
    assert ("Retry-After", "1") in limited.headers
    assert update(app, [{"user_id": "u"}], now=0.999).status == 429
    # The window (0.0, 1.0] no longer holds the requests of t=0; the 429s were not counted.
    assert update(app, [{"user_id": "u"}], now=1.0).status == 200
    state = snapshot(app)
    assert state["requests"]["blux.update"] == {"total": 23, "by_status": {"200": 21, "429": 2}}
    assert state["max_requests_in_window"]["blux.update"] == 22
    assert state["first_request_at"]["blux.update"] == 0.0
    assert state["last_request_at"]["blux.update"] == 1.0


def test_blux_delete_rate_limit() -> None:
    app = SandboxApp()
    statuses = [delete(app, ["x"], now=i / 1000).status for i in range(101)]
    assert statuses == [200] * 100 + [429]
    assert delete(app, ["x"], now=1.0005).status == 200  # t=0 has left the window


def test_withdraw_rate_limit_uses_the_envelope() -> None:
    app = SandboxApp()
    for i in range(10):
        assert withdraw(app, i, now=0.0).status == 200
    response = withdraw(app, 99, now=0.3)
    assert response.status == 429
    assert envelope(response)["code"] == "ERR-SANDBOX-RATE"
    assert ("Retry-After", "1") in response.headers
    assert "99" not in snapshot(app)["withdrawn_user_ids"]
    assert withdraw(app, 99, now=1.0).status == 200


def test_refused_requests_do_not_use_up_the_rate() -> None:
    app = SandboxApp(SandboxConfig(update_rate=2))
    for _ in range(5):
        assert call(app, UPDATE, {"users": []}).status == 400
        assert call(app, UPDATE, {"users": [{"user_id": "u"}]}, headers={}).status == 401
    assert [update(app, [{"user_id": "u"}]).status for _ in range(3)] == [200, 200, 429]
    assert snapshot(app)["max_requests_in_window"]["blux.update"] == 13


def test_endpoints_are_limited_separately() -> None:
    app = SandboxApp(SandboxConfig(update_rate=1, delete_rate=1, withdraw_rate=1))
    assert update(app, [{"user_id": "u"}]).status == 200
    assert delete(app, ["v"]).status == 200
    assert withdraw(app, "w").status == 200
    assert update(app, [{"user_id": "u"}]).status == 429


def test_window_seconds_is_configurable() -> None:
    app = SandboxApp(SandboxConfig(update_rate=1, window_seconds=2.5))
    assert update(app, [{"user_id": "u"}], now=10.0).status == 200
    limited = update(app, [{"user_id": "u"}], now=12.0)
    assert limited.status == 429
    assert ("Retry-After", "3") in limited.headers
    assert update(app, [{"user_id": "u"}], now=12.5).status == 200


def test_a_late_arrival_cannot_overfill_a_later_window() -> None:
    # Threads may reach the lock out of order: t=0.6 handled before t=0.5.
    app = SandboxApp(SandboxConfig(update_rate=2))
    assert update(app, [{"user_id": "u"}], now=0.0).status == 200
    assert update(app, [{"user_id": "u"}], now=1.2).status == 200
    assert update(app, [{"user_id": "u"}], now=0.9).status == 200  # (-0.1, 0.9] and (0.2, 1.2]
    # 0.5 fits (-0.5, 0.5] beside 0.0, but would make (-0.1, 0.9] hold three.
    assert update(app, [{"user_id": "u"}], now=0.5).status == 429


arrival_times = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=6.0, allow_nan=False),
        st.integers(min_value=0, max_value=60).map(lambda i: i / 10),
    ),
    min_size=0,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(times=arrival_times, width=st.sampled_from([0.5, 1.0, 1.5]))
def test_arrival_window_matches_a_brute_force_count(times: list[float], width: float) -> None:
    window = ArrivalWindow(width)
    best = 0
    for i, t in enumerate(times):
        predicted = window.busiest_with(t)
        window.add(t)
        best = max(best, predicted)
        assert best == brute_force_max(times[: i + 1], width)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 3.0]),
            st.sampled_from([0.0, 0.0, 0.1, 0.4]),
        ),
        max_size=200,
    )
)
def test_arrival_window_stays_exact_while_forgetting(steps: list[tuple[float, float]]) -> None:
    # A short horizon makes old arrivals go; lateness stays within it, so counts stay exact.
    window = ArrivalWindow(1.0, horizon=0.5)
    clock = 0.0
    times: list[float] = []
    best = 0
    for step, late in steps:
        clock += step
        t = clock - late
        best = max(best, window.busiest_with(t))
        window.add(t)
        times.append(t)
    assert best == brute_force_max(times, 1.0)


@settings(max_examples=100, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(
            st.one_of(
                st.floats(min_value=0.0, max_value=4.0, allow_nan=False),
                st.integers(min_value=0, max_value=40).map(lambda i: i / 10),
            ),
            st.booleans(),
        ),
        max_size=40,
    ),
    in_order=st.booleans(),
)
def test_mirror_max_in_window_and_rate_limit_are_exact(
    arrivals: list[tuple[float, bool]], in_order: bool
) -> None:
    if in_order:
        arrivals = sorted(arrivals)
    app = SandboxApp(SandboxConfig(update_rate=3))
    accepted: list[float] = []
    for now, authorised in arrivals:
        headers = BLUX_HEADERS if authorised else {"Content-Type": "application/json"}
        response = call(app, UPDATE, {"users": [{"user_id": "u"}]}, headers=headers, now=now)
        if response.status == 200:
            accepted.append(now)
    times = [now for now, _ in arrivals]
    state = snapshot(app)
    assert state["max_requests_in_window"]["blux.update"] == brute_force_max(times, 1.0)
    assert brute_force_max(accepted, 1.0) <= 3
    if in_order:  # then nothing is refused that fits
        authorised_times = [now for now, ok in arrivals if ok]
        assert len(accepted) >= min(len(authorised_times), 3)
    if times:
        assert state["first_request_at"]["blux.update"] == min(times)
        assert state["last_request_at"]["blux.update"] == max(times)


# -- faults ---------------------------------------------------------------------------------------


def test_error_rate_answers_500_after_auth_and_validation() -> None:
    app = SandboxApp(faults=Faults(error_rate=1.0))
    assert call(app, UPDATE, {"users": [{"user_id": "u"}]}, headers={}).status == 401
    assert call(app, UPDATE, {"users": []}).status == 400
    assert update(app, [{"user_id": "u"}]).status == 500
    assert delete(app, ["u"]).status == 500
    response = withdraw(app, "u")
    assert response.status == 500
    assert envelope(response)["statusCode"] == 500
    state = snapshot(app)
    assert state["users"] == {}
    assert state["deleted_user_ids"] == []
    assert state["withdrawn_user_ids"] == []


def test_error_rate_is_random_and_seeded() -> None:
    def statuses(seed: int) -> list[int]:
        app = SandboxApp(SandboxConfig(update_rate=1000), Faults(error_rate=0.5, seed=seed))
        return [update(app, [{"user_id": "u"}]).status for _ in range(200)]

    first = statuses(7)
    assert first == statuses(7)
    assert 40 < first.count(500) < 160
    assert set(first) == {200, 500}


def test_changing_the_seed_reseeds() -> None:
    app = SandboxApp(SandboxConfig(update_rate=1000), Faults(error_rate=0.5, seed=1))
    a = [update(app, [{"user_id": "u"}]).status for _ in range(50)]
    app.faults.seed = 2
    app.faults.seed = 1
    b = [update(app, [{"user_id": "u"}]).status for _ in range(50)]
    assert a != b  # the random stream went on: the seed did not change between two requests
    app.faults.seed = 3
    c = [update(app, [{"user_id": "u"}]).status for _ in range(50)]
    app.faults.seed = 1
    d = [update(app, [{"user_id": "u"}]).status for _ in range(50)]
    assert d == a
    assert c != a


def test_rate_limit_comes_before_error_rate() -> None:
    app = SandboxApp(SandboxConfig(update_rate=1), Faults(error_rate=1.0))
    assert update(app, [{"user_id": "u"}]).status == 500
    assert update(app, [{"user_id": "u"}]).status == 429


def test_hang_and_latency_delay_any_answer_and_the_request_still_lands() -> None:
    app = SandboxApp(faults=Faults(hang_rate=1.0, latency_seconds=0.25))
    response = update(app, [{"user_id": "u"}])
    assert response.status == 200
    assert response.delay_seconds == pytest.approx(30.25)
    assert "u" in snapshot(app)["users"]
    unauthorised = call(app, UPDATE, {"users": [{"user_id": "u"}]}, headers={})
    assert unauthorised.status == 401
    assert unauthorised.delay_seconds == pytest.approx(30.25)
    app.faults.hang_rate = 0.0
    app.faults.hang_seconds = 99.0
    assert withdraw(app, "u").delay_seconds == pytest.approx(0.25)
    app.faults.latency_seconds = 0.0
    assert delete(app, ["u"]).delay_seconds == 0.0


def test_hang_rate_is_a_share() -> None:
    app = SandboxApp(
        SandboxConfig(update_rate=1000), Faults(hang_rate=0.25, hang_seconds=10, seed=3)
    )
    delays = [update(app, [{"user_id": "u"}]).delay_seconds for _ in range(400)]
    assert set(delays) == {0.0, 10.0}
    assert 50 < delays.count(10.0) < 150


def test_reject_user_ids_refuses_the_request_naming_the_index() -> None:
    app = SandboxApp(faults=Faults(reject_user_ids=frozenset({"bad-7", "42"})))
    response = update(app, [{"user_id": "ok"}, {"user_id": "bad-7"}])
    assert response.status == 400
    assert "users[1].user_id" in message(response)
    assert "bad-7" not in message(response)
    response = delete(app, ["a", "b", "bad-7"])
    assert response.status == 400
    assert "user_ids[2]" in message(response)
    assert "bad-7" not in message(response)
    response = withdraw(app, 42)
    assert response.status == 400
    assert envelope(response)["code"] == "ERR-AB-VAL-00"
    state = snapshot(app)
    assert (state["users"], state["deleted_user_ids"], state["withdrawn_user_ids"]) == ({}, [], [])
    assert update(app, [{"user_id": "ok"}]).status == 200
    assert delete(app, ["a"]).status == 200
    assert withdraw(app, 41).status == 200


def test_nachocode_fault_order() -> None:
    app = SandboxApp(SandboxConfig(withdraw_rate=1), Faults(nachocode_disabled=True))
    for _ in range(3):
        assert withdraw(app, "u").status == 403  # before the rate limit: it does not count
    app.faults.nachocode_disabled = False
    app.faults.reject_user_ids = frozenset({"u"})
    assert withdraw(app, "u").status == 400
    assert withdraw(app, "v").status == 429
    app.faults.reject_user_ids = frozenset()
    assert withdraw(app, "u", now=1.0).status == 200
    assert withdraw(app, "u", now=2.0).status == 410


def test_faults_json_round_trip_and_validation() -> None:
    faults = Faults(
        error_rate=0.1,
        hang_rate=0.2,
        hang_seconds=5,
        latency_seconds=0.3,
        reject_user_ids=frozenset({"b", "a"}),
        nachocode_disabled=True,
        seed=9,
    )
    data = faults.to_json()
    assert data["reject_user_ids"] == ["a", "b"]
    assert json.loads(json.dumps(data)) == data
    assert Faults.from_json(data) == faults
    assert Faults.from_json({}) == Faults()
    assert Faults.from_json({"reject_user_ids": [1, "x"]}).reject_user_ids == {"1", "x"}
    for bad in (
        {"error_rate": 2},
        {"error_rate": "0.5"},
        {"hang_rate": -0.1},
        {"latency_seconds": -1},
        {"hang_seconds": True},
        {"reject_user_ids": "abc"},
        {"reject_user_ids": [None]},
        {"nachocode_disabled": 1},
        {"seed": 1.5},
        {"typo": 1},
    ):
        with pytest.raises(ValueError):
            Faults.from_json(bad)


# -- control routes and the mirror ----------------------------------------------------------------


def test_control_faults_is_a_partial_update() -> None:
    faults = Faults(latency_seconds=0.5)
    app = SandboxApp(faults=faults)
    response = call(app, "/_sandbox/faults", {"error_rate": 0.25}, headers={})
    assert response.status == 200
    assert isinstance(response.body, dict)
    assert response.body["error_rate"] == 0.25
    assert response.body["latency_seconds"] == 0.5
    assert faults.error_rate == 0.25  # the same object, changed in place
    bad = call(app, "/_sandbox/faults", {"error_rate": 0.5, "hang_rate": 7}, headers={})
    assert bad.status == 400
    assert "hang_rate" in message(bad)
    assert faults.error_rate == 0.25  # all or nothing
    assert call(app, "/_sandbox/faults", raw=b"[]", headers={}).status == 400
    assert call(app, "/_sandbox/faults", raw=b"", method="GET", headers={}).body == faults.to_json()
    assert snapshot(app)["faults"]["error_rate"] == 0.25


def test_control_state_and_reset() -> None:
    app = SandboxApp(faults=Faults(latency_seconds=0.1))
    update(app, [{"user_id": "a"}])
    delete(app, ["b"])
    withdraw(app, "c")
    state = call(app, "/_sandbox/state", raw=b"", method="GET", headers={})
    assert state.status == 200
    assert state.delay_seconds == 0.0  # the control routes are never delayed
    assert state.body == app.snapshot()
    reset = call(app, "/_sandbox/reset", raw=b"", headers={})
    assert reset.status == 200
    after = snapshot(app)
    assert (after["users"], after["deleted_user_ids"], after["withdrawn_user_ids"]) == ({}, [], [])
    assert after["requests"]["blux.update"] == {"total": 0, "by_status": {}}
    assert after["max_requests_in_window"] == {
        "blux.update": 0,
        "blux.delete": 0,
        "nachocode.withdraw": 0,
    }
    assert after["first_request_at"]["blux.update"] is None
    assert after["faults"]["latency_seconds"] == 0.1
    assert withdraw(app, "c").status == 200  # withdrawn again after the reset


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/blux"),
        ("POST", "/blux/v2/applications/sandbox-app/users/update-properties"),
        ("POST", "/_sandbox/state"),
        ("GET", "/_sandbox/reset"),
        ("GET", "/_sandbox/nothing"),
    ],
)
def test_anything_else_is_404_json(method: str, path: str) -> None:
    response = call(SandboxApp(), path, raw=b"", method=method)
    assert response.status == 404
    assert isinstance(response.body, dict)
    assert "message" in response.body


def test_snapshot_counts_every_status_and_is_a_json_able_copy() -> None:
    app = SandboxApp()
    update(app, [{"user_id": "a", "custom_user_properties": {"n": 1}}], now=5.0)
    call(app, UPDATE, {"users": []}, now=5.1)
    call(app, UPDATE, {"users": [{"user_id": "a"}]}, headers={}, now=7.0)
    withdraw(app, "a", now=6.0)
    withdraw(app, "a", now=6.5)
    state = snapshot(app)
    assert json.loads(json.dumps(state)) == state
    assert state["requests"] == {
        "blux.update": {"total": 3, "by_status": {"200": 1, "400": 1, "401": 1}},
        "blux.delete": {"total": 0, "by_status": {}},
        "nachocode.withdraw": {"total": 2, "by_status": {"200": 1, "410": 1}},
    }
    assert state["max_requests_in_window"] == {
        "blux.update": 2,
        "blux.delete": 0,
        "nachocode.withdraw": 2,
    }
    assert state["first_request_at"] == {
        "blux.update": 5.0,
        "blux.delete": None,
        "nachocode.withdraw": 6.0,
    }
    assert state["last_request_at"]["blux.update"] == 7.0
    state["users"]["a"]["custom_user_properties"]["n"] = 2
    assert snapshot(app)["users"]["a"]["custom_user_properties"] == {"n": 1}


def test_the_app_is_thread_safe() -> None:
    app = SandboxApp(SandboxConfig(update_rate=10_000))

    def work(k: int) -> None:
        for i in range(50):
            update(app, [{"user_id": f"{k}-{i}"}], now=float(i))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    state = snapshot(app)
    assert len(state["users"]) == 400
    assert state["requests"]["blux.update"]["total"] == 400
    assert state["max_requests_in_window"]["blux.update"] == 8


# -- mock_transport -------------------------------------------------------------------------------


def test_mock_transport_with_a_sync_client() -> None:
    app = SandboxApp()
    ticks = iter([100.0, 100.5, 101.0])
    transport = mock_transport(app, clock=lambda: next(ticks))
    with httpx.Client(transport=transport, base_url="http://sandbox/blux") as client:
        path = f"/v2/applications/{CFG.blux_application_id}/users/update-properties/bulk"
        ok = client.post(
            path,
            json={"users": [{"user_id": "a"}]},
            headers={"Authorization": CFG.blux_secret_key},
        )
        assert ok.status_code == 200
        refused = client.post(path, json={"users": [{"user_id": 1}]})
        assert refused.status_code == 401
        assert refused.json() == {"message": "unauthorized: the Authorization header is missing"}
    state = snapshot(app)
    assert state["first_request_at"]["blux.update"] == 100.0
    assert state["last_request_at"]["blux.update"] == 100.5


def test_mock_transport_with_an_async_client_and_a_hang() -> None:
    app = SandboxApp(faults=Faults(latency_seconds=1.0))

    async def scenario() -> None:
        async with httpx.AsyncClient(
            transport=mock_transport(app),
            base_url="http://sandbox/nachocode",
            headers={k: v for k, v in NACHO_HEADERS.items() if k != "Content-Type"},
        ) as client:
            first = await client.request("DELETE", "/api/app-user/v2", json={"userId": 1})
            assert first.status_code == 200  # a short delay is ignored
            app.faults.hang_rate = 1.0
            with pytest.raises(httpx.ReadTimeout):
                await client.request("DELETE", "/api/app-user/v2", json={"userId": 2})
            app.faults.hang_rate = 0.0
            again = await client.post("/api/app-user/v2", json={"userId": "2"})
            assert again.status_code == 410
            assert again.json()["code"] == "ERR-AB-ACS-22"

    asyncio.run(scenario())
    assert snapshot(app)["withdrawn_user_ids"] == ["1", "2"]


def test_mock_transport_percent_encoded_application_id() -> None:
    app = SandboxApp(SandboxConfig(blux_application_id="my app"))
    with httpx.Client(transport=mock_transport(app), base_url="http://sandbox/blux") as client:
        response = client.post(
            "/v2/applications/my%20app/users/delete/bulk",
            json={"user_ids": ["x"]},
            headers={"Authorization": CFG.blux_secret_key},
        )
    assert response.status_code == 200


# -- the HTTP server ------------------------------------------------------------------------------


def test_server_keeps_the_connection_alive() -> None:
    with SandboxServer(SandboxApp()) as server:
        assert server.blux_base_url == server.url + "/blux"
        assert server.nachocode_base_url == server.url + "/nachocode"
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            body = json.dumps({"users": [{"user_id": "a"}]})
            connection.request("POST", UPDATE, body=body, headers=BLUX_HEADERS)
            first = connection.getresponse()
            assert first.status == 200
            assert first.getheader("Content-Length") == str(len(first.read()))
            sock = connection.sock
            assert sock is not None
            connection.request("POST", DELETE, body='{"user_ids": ["a"]}', headers=BLUX_HEADERS)
            second = connection.getresponse()
            second.read()
            assert second.status == 200
            connection.request("GET", "/nope")
            third = connection.getresponse()
            assert (third.status, json.loads(third.read())["message"][:8]) == (404, "no such ")
            assert connection.sock is sock  # one connection for all three
            assert snapshot(server.app)["deleted_user_ids"] == ["a"]
            server.stop()
            sock.settimeout(5)
            assert sock.recv(1) == b""  # stop() closed the idle kept-alive connection
        finally:
            connection.close()


def test_server_answers_500_when_the_app_breaks() -> None:
    class Broken(SandboxApp):
        def handle(
            self, method: str, path: str, headers: Mapping[str, str], body: bytes, now: float
        ) -> SandboxResponse:
            raise KeyError(path)

    lines: list[str] = []
    with SandboxServer(Broken(), log=lines.append) as server:
        response = httpx.get(server.url + "/_sandbox/state")
    assert response.status_code == 500
    assert response.json() == {"message": "sandbox internal error: KeyError"}
    assert lines == ["GET /_sandbox/state -> 500 sandbox internal error: KeyError"]


def test_server_with_httpx_chunked_body_and_control_routes() -> None:
    with SandboxServer(SandboxApp()) as server, httpx.Client(base_url=server.url) as client:
        assert client.post("/_sandbox/faults", json={"reject_user_ids": ["b"]}).status_code == 200
        chunks = [b'{"users": [{"user_id": ', b'"a"}, {"user_id": "c"}]}']
        response = client.post(UPDATE, content=iter(chunks), headers=BLUX_HEADERS)
        assert response.status_code == 200
        response = client.request("DELETE", WITHDRAW, json={"userId": "b"}, headers=NACHO_HEADERS)
        assert response.status_code == 400
        state = client.get("/_sandbox/state").json()
        assert sorted(state["users"]) == ["a", "c"]
        assert state["faults"]["reject_user_ids"] == ["b"]


def test_server_takes_the_arrival_time_before_the_body() -> None:
    app = SandboxApp()
    with SandboxServer(app) as server, socket.create_connection(("127.0.0.1", server.port)) as sock:
        body = json.dumps({"user_ids": ["a"]}).encode()
        head = (
            f"POST {DELETE} HTTP/1.1\r\nHost: x\r\nAuthorization: {CFG.blux_secret_key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        before = time.monotonic()
        sock.sendall(head.encode())
        time.sleep(0.2)
        body_sent_at = time.monotonic()
        sock.sendall(body)
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    arrived = snapshot(app)["first_request_at"]["blux.delete"]
    assert before <= arrived < body_sent_at


def test_stop_interrupts_a_hang() -> None:
    app = SandboxApp(faults=Faults(hang_rate=1.0, hang_seconds=30.0))
    server = SandboxServer(app)
    server.start()
    outcome: list[BaseException | int] = []

    def client() -> None:
        try:
            with httpx.Client(timeout=10.0) as c:
                outcome.append(c.post(server.url + DELETE, json={"user_ids": ["a"]}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=client)
    thread.start()
    for _ in range(200):  # until the request has been handled (and is now waiting)
        if snapshot(app)["requests"]["blux.delete"]["total"]:
            break
        time.sleep(0.005)
    server.stop()
    thread.join(timeout=5.0)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], httpx.HTTPError)
    assert not isinstance(outcome[0], httpx.TimeoutException)  # cut off, not waited out
    server.stop()  # idempotent


def test_server_log_lines_carry_counts_not_values() -> None:
    lines: list[str] = []
    with SandboxServer(SandboxApp(), log=lines.append) as server, httpx.Client() as client:
        users = [
            {"user_id": "a", "user_properties": FULL_PROPERTIES},
            {"user_id": "b", "custom_user_properties": {"name": "Hong Gildong"}},
        ]
        client.post(server.url + UPDATE, json={"users": users}, headers=BLUX_HEADERS)
        bad = [{"user_id": "c", "user_properties": {"phone_number": "010-5555-4444"}}]
        client.post(server.url + UPDATE, json={"users": bad}, headers=BLUX_HEADERS)
        client.post(server.url + DELETE, json={"user_ids": ["a"]}, headers=BLUX_HEADERS)
        client.post(server.url + WITHDRAW, json={"userId": "a"}, headers=NACHO_HEADERS)
    assert lines[0] == "POST blux.update -> 200 users=2"
    assert lines[1].startswith("POST blux.update -> 400 users[0].user_properties.phone_number")
    assert lines[2] == "POST blux.delete -> 200 user_ids=1"
    assert lines[3].startswith("POST nachocode.withdraw -> 200")
    text = "\n".join(lines)
    for value in (PHONE, EMAIL, "Hong", "5555", CFG.blux_secret_key, CFG.nachocode_secret_key):
        assert value not in text


def test_server_url_needs_start() -> None:
    server = SandboxServer(SandboxApp())
    with pytest.raises(RuntimeError):
        _ = server.url
    server.stop()  # a no-op


def test_serve_prints_the_config_and_stops_on_ctrl_c(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lines: list[str] = []

    def poke() -> None:
        try:
            for _ in range(200):
                try:
                    response = httpx.get(f"http://127.0.0.1:{port}/_sandbox/state", timeout=2)
                    lines.append(f"status {response.status_code}")
                    return
                except httpx.ConnectError:
                    time.sleep(0.005)
        finally:
            _thread.interrupt_main()

    thread = threading.Thread(target=poke)
    thread.start()
    serve("127.0.0.1", port, CFG, Faults(), lines.append)
    thread.join()
    out = capsys.readouterr().out
    assert f'base_url = "http://127.0.0.1:{port}/blux"' in out
    assert f'base_url = "http://127.0.0.1:{port}/nachocode"' in out
    assert f'secret_key = "{CFG.blux_secret_key}"' in out
    assert f'api_key = "{CFG.nachocode_api_key}"' in out
    assert "status 200" in lines
    assert "GET /_sandbox/state -> 200" in lines


def test_config_snippet_is_toml() -> None:
    with SandboxServer(SandboxApp()) as server:
        parsed = tomllib.loads(config_snippet(server))
    assert parsed["blux"] == {
        "base_url": server.blux_base_url,
        "application_id": CFG.blux_application_id,
        "secret_key": CFG.blux_secret_key,
    }
    assert parsed["nachocode"]["base_url"] == server.nachocode_base_url
