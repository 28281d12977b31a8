"""The sandbox as Blux: the update and delete APIs, checked as the document describes them."""

from __future__ import annotations

from typing import Any

import pytest

from syncer.sandbox import (
    SandboxApp,
)

from .sandbox_calls import (
    CFG,
    DELETE,
    EMAIL,
    FULL_PROPERTIES,
    PHONE,
    UPDATE,
    call,
    delete,
    message,
    snapshot,
    update,
)

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
