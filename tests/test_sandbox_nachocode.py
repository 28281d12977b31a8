"""The sandbox as nachocode: withdrawals, the error envelope and its codes."""

from __future__ import annotations

import pytest

from syncer.sandbox import (
    Faults,
    SandboxApp,
)

from .sandbox_calls import (
    CFG,
    NACHO_HEADERS,
    WITHDRAW,
    call,
    envelope,
    snapshot,
    withdraw,
)

# -- nachocode ------------------------------------------------------------------------------------


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
