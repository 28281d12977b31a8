"""The sandbox's rate limits, counted exactly over sliding windows as a server would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.sandbox import (
    SandboxApp,
    SandboxConfig,
)
from syncer.sandbox.app import ArrivalWindow

from .sandbox_calls import (
    BLUX_HEADERS,
    UPDATE,
    brute_force_max,
    call,
    delete,
    envelope,
    snapshot,
    update,
    withdraw,
)

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
