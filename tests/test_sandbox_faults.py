"""The sandbox's faults (errors, hangs, refused users), its control routes and its mirror."""

from __future__ import annotations

import json

import pytest

from syncer.sandbox import (
    Faults,
    SandboxApp,
    SandboxConfig,
)

from .sandbox_calls import (
    UPDATE,
    call,
    delete,
    envelope,
    message,
    snapshot,
    update,
    withdraw,
)

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
