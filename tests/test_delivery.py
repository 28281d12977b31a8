"""Delivery against the sandbox (in-process): batching, priorities, and every fault of an API."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from syncer.config import BluxConfig, NachocodeConfig
from syncer.deliver import NARROWING_ATTEMPTS, Deliverer
from syncer.destinations import Answer, send
from syncer.destinations import blux as blux_api
from syncer.destinations import nachocode as nacho_api
from syncer.destinations.blux import BluxDelete, BluxUpdate
from syncer.destinations.nachocode import NachocodeWithdraw
from syncer.errors import (
    CredentialsRejected,
    EndpointRefused,
    HeldBack,
    RateLimited,
    RejectedError,
    RetriableError,
    UserUnknown,
)
from syncer.mapping import Mapping
from syncer.model import NORMAL, URGENT, Endpoint, Op, Outcome, RawRow, Status
from syncer.ratelimit import AsyncRateLimiter, Pacer, Send
from syncer.retry import RetryPolicy, parse_retry_after
from syncer.sandbox import Faults, SandboxApp, SandboxConfig, SandboxServer, mock_transport

from .helpers import SANDBOX, Recorder, failing_for

FAST = RetryPolicy(max_attempts=5, initial=0.001, maximum=0.005, retry_after_max=0.005)


def mapping() -> Mapping:
    from syncer.config import MappingConfig

    return Mapping(MappingConfig.model_validate({
        "user_properties": {"marketing_notification_consent": "mkt"},
        "custom_user_properties": {"name": "name"}}), b"k" * 16)


def upsert(uid: int, urgent: bool = False, m: Mapping | None = None) -> Op:
    record = (m or mapping()).record(RawRow(uid, 1, False, {"mkt": 0 if urgent else 1,
                                                             "name": f"n{uid}"}))
    return Op(Endpoint.BLUX_UPDATE, str(uid), record.payload, URGENT if urgent else NORMAL)


def delete(uid: int) -> Op:
    return Op(Endpoint.BLUX_DELETE, str(uid), priority=URGENT)


def withdraw(uid: int) -> Op:
    return Op(Endpoint.NACHOCODE_WITHDRAW, str(uid), priority=URGENT)


def senders(rate: float = 10_000.0, **blux: Any) -> list[Any]:
    b = BluxConfig.model_validate({"base_url": "http://sandbox/blux",
                                   "application_id": SANDBOX.blux_application_id,
                                   "secret_key": SANDBOX.blux_secret_key,
                                   "update_rate": rate, "delete_rate": rate, **blux})
    n = NachocodeConfig.model_validate({"base_url": "http://sandbox/nachocode",
                                        "api_key": SANDBOX.nachocode_api_key,
                                        "secret_key": SANDBOX.nachocode_secret_key,
                                        "rate": rate})
    return [BluxUpdate(b), BluxDelete(b), NachocodeWithdraw(n)]


def app(**faults: Any) -> SandboxApp:
    return SandboxApp(SandboxConfig(update_rate=100_000, delete_rate=100_000,
                                    withdraw_rate=100_000), Faults(seed=5, **faults))


def deliver(ops: list[Op], transport: httpx.AsyncBaseTransport, *, policy: RetryPolicy = FAST,
            rate: float = 10_000.0, stop_after: int | None = None,
            **blux: Any) -> tuple[list[Outcome], Deliverer]:
    outcomes: list[Outcome] = []

    async def go() -> Deliverer:
        async with httpx.AsyncClient(transport=transport) as client, Deliverer(
                senders(rate, **blux), client, policy, outcomes.append) as d:
            d.submit(ops)
            if stop_after is not None:
                while len(outcomes) < stop_after:
                    await asyncio.sleep(0.001)
                d.stop_accepting()
            await d.drain()
            return d

    return outcomes, asyncio.run(go())


def statuses(outcomes: list[Outcome]) -> Counter[Status]:
    return Counter(o.status for o in outcomes)


def test_batches_respect_documented_sizes_and_everything_lands() -> None:
    sandbox = app()
    rec = Recorder(mock_transport(sandbox))
    ops = [upsert(i) for i in range(250)] + [delete(i) for i in range(1000, 4500)] + \
          [withdraw(i) for i in range(7)]
    outcomes, _ = deliver(ops, rec)
    assert statuses(outcomes) == {Status.DELIVERED: len(ops)}
    sizes: dict[str, list[int]] = {}
    for path, body in rec.bodies:
        n = len(body.get("users") or body.get("user_ids") or [1])
        sizes.setdefault(path.rsplit("/", 2)[-2], []).append(n)
    assert sorted(sizes["update-properties"]) == [50, 100, 100]
    assert sorted(sizes["delete"]) == [500, 3000]
    assert len(sizes["app-user"]) == 7
    snap = sandbox.snapshot()
    assert len(snap["users"]) == 250 and len(snap["withdrawn_user_ids"]) == 7


def test_urgent_operations_go_first() -> None:
    rec = Recorder(mock_transport(app()))
    m = mapping()
    ops = [upsert(i, m=m) for i in range(300)] + [upsert(900 + i, urgent=True, m=m)
                                                  for i in range(30)]
    outcomes, _ = deliver(ops, rec, max_in_flight=1)
    assert statuses(outcomes) == {Status.DELIVERED: 330}
    first = rec.bodies[0][1]["users"]
    ids = [u["user_id"] for u in first]
    assert ids[:30] == [str(900 + i) for i in range(30)]  # the withdrawals, topped up
    assert len(ids) == 100


def test_5xx_and_hangs_are_retried_until_delivered() -> None:
    sandbox = app(error_rate=0.3, hang_rate=0.1, hang_seconds=30)
    policy = RetryPolicy(max_attempts=30, initial=0.001, maximum=0.002)
    ops = [upsert(i) for i in range(500)] + [withdraw(i) for i in range(50)]
    outcomes, d = deliver(ops, mock_transport(sandbox), policy=policy)
    assert statuses(outcomes) == {Status.DELIVERED: 550}
    assert len(sandbox.snapshot()["users"]) == 500
    assert d.report().requests[Endpoint.BLUX_UPDATE] > 5


def test_what_keeps_failing_stays_pending_never_delivered() -> None:
    sandbox = app(error_rate=1.0)
    outcomes, d = deliver([upsert(i) for i in range(150)], mock_transport(sandbox))
    assert statuses(outcomes) == {Status.PENDING: 150}
    assert all("500" in o.reason for o in outcomes)
    # each batch tried max_attempts times, and one of them split once to find out whether the
    # API takes a part of it: it does not, so nothing is narrowed further
    tries = 2 * FAST.max_attempts + 2 * NARROWING_ATTEMPTS
    assert d.report().requests[Endpoint.BLUX_UPDATE] == tries


@pytest.mark.parametrize("status", [500, 0], ids=["5xx", "timeout"])
@pytest.mark.parametrize("users", [250, 3], ids=["many-batches", "one-batch"])
def test_a_user_that_always_gets_5xx_is_narrowed_down_and_quarantined(status: int,
                                                                      users: int) -> None:
    sandbox = app()
    rec = Recorder(mock_transport(sandbox), failing_for("2", status))
    outcomes, d = deliver([upsert(i) for i in range(users)], rec)
    assert statuses(outcomes) == {Status.DELIVERED: users - 1, Status.QUARANTINED: 1}
    (held,) = [o for o in outcomes if o.status is Status.QUARANTINED]
    assert held.op.user_id == "2" and held.transient
    assert "while the other users of its batch were accepted" in held.reason
    assert len(sandbox.snapshot()["users"]) == users - 1
    # bounded: the batch's own tries, then about two parts per halving, a few tries each
    assert d.report().requests[Endpoint.BLUX_UPDATE] <= users // 100 + 1 + FAST.max_attempts + 30


def test_429_pauses_the_endpoint_and_honours_retry_after() -> None:
    def once_429(request: httpx.Request, n: int) -> httpx.Response | None:
        if n == 1:
            return httpx.Response(429, headers={"Retry-After": "1"}, request=request)
        return None

    rec = Recorder(mock_transport(app()), once_429)
    outcomes, d = deliver([upsert(i) for i in range(10)], rec)
    assert statuses(outcomes) == {Status.DELIVERED: 10}
    assert len(rec.bodies) == 2
    assert d.report().throttled[Endpoint.BLUX_UPDATE] > 0


def test_a_poison_user_is_narrowed_down_and_quarantined() -> None:
    sandbox = app(reject_user_ids=frozenset({"37"}))
    rec = Recorder(mock_transport(sandbox))
    outcomes, _ = deliver([upsert(i) for i in range(100)], rec)
    by = statuses(outcomes)
    assert by == {Status.DELIVERED: 99, Status.QUARANTINED: 1}
    (bad,) = [o for o in outcomes if o.status is Status.QUARANTINED]
    assert bad.op.user_id == "37" and "400" in bad.reason
    # 1 + 2 per level of splitting (100 -> 50 -> 25 -> 13 -> 7 -> 4 -> 2 -> 1)
    assert len(rec.bodies) <= 1 + 2 * 7
    assert "37" not in sandbox.snapshot()["users"]


def test_wrong_blux_secret_stops_blux_quickly_and_not_nachocode() -> None:
    sandbox = app()
    ops = [upsert(i) for i in range(2000)] + [withdraw(i) for i in range(5)]
    outcomes, d = deliver(ops, mock_transport(sandbox), secret_key="wrong", max_in_flight=3)
    assert "blux" in d.report().credentials
    blux = [o for o in outcomes if o.op.destination == "blux"]
    assert {o.status for o in blux} == {Status.PENDING}
    assert d.report().requests[Endpoint.BLUX_UPDATE] <= 3
    assert Endpoint.BLUX_DELETE not in d.report().requests
    nacho = [o for o in outcomes if o.op.destination == "nachocode"]
    assert {o.status for o in nacho} == {Status.DELIVERED}


def test_nachocode_403_holds_withdrawals_back_without_blocking_blux() -> None:
    sandbox = app(nachocode_disabled=True)
    ops = [withdraw(i) for i in range(20)] + [upsert(i) for i in range(30)]
    outcomes, d = deliver(ops, mock_transport(sandbox))
    assert Endpoint.NACHOCODE_WITHDRAW in d.report().held
    assert "ERR-AB-ACS-21" in d.report().held[Endpoint.NACHOCODE_WITHDRAW]
    assert {o.status for o in outcomes if o.op.destination == "nachocode"} == {Status.PENDING}
    assert {o.status for o in outcomes if o.op.destination == "blux"} == {Status.DELIVERED}
    assert not d.report().credentials


def test_nachocode_410_already_withdrawn_counts_as_done() -> None:
    sandbox = app()
    deliver([withdraw(1)], mock_transport(sandbox))
    outcomes, _ = deliver([withdraw(1)], mock_transport(sandbox))
    assert statuses(outcomes) == {Status.DELIVERED: 1}
    assert sandbox.snapshot()["requests"]["nachocode.withdraw"]["by_status"]["410"] == 1


def test_graceful_stop_leaves_the_rest_pending() -> None:
    sandbox = app()
    ops = [upsert(i) for i in range(1000)]
    outcomes, _ = deliver(ops, mock_transport(sandbox), rate=50, stop_after=100)
    by = statuses(outcomes)
    assert by[Status.DELIVERED] >= 100 and by[Status.PENDING] > 0
    assert by[Status.DELIVERED] + by[Status.PENDING] == 1000
    assert len(sandbox.snapshot()["users"]) == by[Status.DELIVERED]


# ---- classification (pure)


def answer(status: int, body: object = None, **headers: str) -> Answer:
    return Answer(status, {k.lower().replace("_", "-"): v for k, v in headers.items()},
                  json.dumps(body).encode() if body is not None else b"")


@pytest.mark.parametrize("status, kind", [
    (200, None), (400, RejectedError), (401, CredentialsRejected), (404, CredentialsRejected),
    (429, RateLimited), (500, RetriableError), (503, RetriableError), (408, RetriableError),
])
def test_blux_answers(status: int, kind: type | None) -> None:
    found = blux_api.classify(answer(status, {"message": "x"}), 0.0)
    assert (found is None) if kind is None else isinstance(found, kind)


@pytest.mark.parametrize("status, code, kind", [
    (200, None, None), (410, "ERR-AB-ACS-22", None), (403, "ERR-AB-ACS-21", HeldBack),
    (401, "ERR-AB-SGK-13", CredentialsRejected), (404, "ERR-AB-KSY-13", CredentialsRejected),
    (400, "ERR-AB-SGK-11", CredentialsRejected), (400, "ERR-AB-AGK-11", CredentialsRejected),
    (400, "ERR-AB-KSY-11", CredentialsRejected), (400, "ERR-AB-AGK-12", CredentialsRejected),
    (400, "ERR-AB-VAL-00", RejectedError), (500, None, RetriableError), (429, None, RateLimited),
])
def test_nachocode_answers(status: int, code: str | None, kind: type | None) -> None:
    body = {"statusCode": status, "path": "/api/app-user/v2", "code": code, "message": "m"}
    found = nacho_api.classify(answer(status, body), 0.0)
    assert (found is None) if kind is None else isinstance(found, kind)


@pytest.mark.parametrize("body, kind", [
    # the documented unknown API key: the keys are wrong
    ({"statusCode": 404, "path": "/api/app-user/v2", "code": "ERR-AB-KSY-13",
      "message": "Provided key information not found."}, CredentialsRejected),
    # nachocode's envelope with another code: about this request (this user), not the keys
    ({"statusCode": 404, "path": "/api/app-user/v2", "code": "ERR-AB-USR-14",
      "message": "User not found."}, UserUnknown),
    # no envelope: not nachocode's API answering (a wrong base_url or path)
    ({"statusCode": 404, "message": "Cannot DELETE /api/app-user/v9", "error": "Not Found"},
     EndpointRefused),
    ({"message": "no such route"}, EndpointRefused),
    (None, EndpointRefused),
    ("<html>not found</html>", EndpointRefused),
])
def test_a_nachocode_404_is_read_from_its_error_code(body: object, kind: type) -> None:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode() if body else b""
    found = nacho_api.classify(Answer(404, {}, raw), 0.0)
    assert type(found) is kind, found
    if kind is RejectedError:
        assert "ERR-AB-USR-14" in str(found)
    if kind is EndpointRefused:
        assert "base_url" in str(found)


def test_error_reasons_never_carry_personal_data() -> None:
    found = blux_api.classify(answer(400, {"message": "bad phone 010-1234-5678 for a@b.com"}), 0)
    assert found is not None
    assert "010-1234-5678" not in str(found) and "a@b.com" not in str(found)


# ---- retry policy and rate limits (pure)


def test_retry_after_seconds_and_http_dates() -> None:
    assert parse_retry_after("3", 0) == 3.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480.0) == 10.0
    assert parse_retry_after("soon", 0) is None and parse_retry_after(None, 0) is None
    assert parse_retry_after("-5", 0) == 0.0
    policy = RetryPolicy(retry_after_max=60)
    assert policy.wait_for(3600, 1) == 60


@given(st.integers(1, 12))
def test_backoff_grows_and_is_capped(attempt: int) -> None:
    policy = RetryPolicy(initial=0.5, maximum=30)
    delay = policy.backoff(attempt)
    assert 0.25 <= delay <= min(30, 0.5 * 2 ** (attempt - 1))


@given(st.floats(0.5, 200), st.lists(st.tuples(st.floats(0, 0.2), st.floats(0, 0.03)),
                                     min_size=1, max_size=300))
def test_pacer_never_lets_more_than_the_rate_into_any_second(
        rate: float, asks: list[tuple[float, float]]) -> None:
    """Whenever the callers ask, and however late the sends leave after their slot, the send
    times never put more than floor(rate) (at least one) requests into any window of one
    second."""
    pacer = Pacer.for_rate(rate)
    now, granted = 0.0, []
    for gap, late in asks:
        now += gap
        now += pacer.delay(now) + late
        pacer.record(now)
        granted.append(now)
    limit = max(1, int(rate))
    j = 0
    for i, t in enumerate(granted):
        while granted[j] <= t - 1.0:
            j += 1
        assert i - j + 1 <= limit


def _most_in_one_second(times: list[float]) -> int:
    times = sorted(times)
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - 1.0:
            j += 1
        best = max(best, i - j + 1)
    return best


@given(st.sampled_from([1.0, 3.0, 20.0, 100.0]),
       st.lists(st.tuples(st.floats(0, 0.1), st.floats(0, 0.5)), min_size=1, max_size=300))
def test_a_request_written_late_holds_back_the_ones_after_it(
        rate: float, asks: list[tuple[float, float]]) -> None:
    """Slots are taken before the request leaves; the write may come up to half a second later
    (a busy event loop, a new connection). Whatever the delays, the *write* times never put more
    than the rate into one second: a late write, once reported, holds the next slots back."""
    pacer = Pacer.for_rate(rate)
    now = 0.0
    pending: list[tuple[float, Send]] = []   # (when it will be written, its slot)
    written: list[float] = []

    def report_writes_until(t: float) -> None:
        for when, slot in [p for p in pending if p[0] <= t]:
            slot.wrote(when)
            written.append(when)
            pending.remove((when, slot))

    for gap, write_delay in asks:
        now += gap
        while True:
            report_writes_until(now)
            wait = pacer.delay(now)
            if wait <= 0:
                break
            next_write = min((when for when, _ in pending), default=now + wait)
            now = max(now, min(now + wait, next_write))
        pending.append((now + write_delay, pacer.record(now)))
    report_writes_until(float("inf"))
    assert _most_in_one_second(written) <= max(1, int(rate))


def test_the_http_layer_reports_when_a_request_was_written() -> None:
    """Over a real connection, ``send`` tells its caller once the request left (that time is
    what the pacing counts); the answer is unchanged."""
    app = SandboxApp(SANDBOX)
    calls: list[int] = []
    with SandboxServer(app) as server:
        blux = BluxConfig.model_validate({"base_url": server.blux_base_url,
                                          "application_id": SANDBOX.blux_application_id,
                                          "secret_key": SANDBOX.blux_secret_key})
        request = BluxUpdate(blux).build([upsert(1)])

        async def go() -> Answer:
            async with httpx.AsyncClient() as client:
                return await send(client, request, 5.0, written=lambda: calls.append(1))

        answer = asyncio.run(go())
    assert answer.status == 200
    assert calls == [1]
    assert app.snapshot()["requests"]["blux.update"]["total"] == 1


def test_async_limiter_paces_and_pauses() -> None:
    clock = [0.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    async def go() -> list[float]:
        limiter = AsyncRateLimiter(Pacer.for_rate(20), lambda: clock[0], sleep)
        times = []
        for n in range(41):
            if n == 20:
                limiter.pause_until(clock[0] + 5)
            await limiter.acquire()
            times.append(clock[0])
        return times

    times = asyncio.run(go())
    assert all(b - a >= 1.04 / 20 - 1e-9 for a, b in itertools.pairwise(times))
    assert times[20] - times[19] >= 5 - 1e-9


def test_nachocode_404s_about_users_never_block_the_endpoint() -> None:
    """Users nachocode does not know (a 404 with a user code) are quarantined one by one; ten
    of them in a row are not the endpoint refusing everything."""
    unknown = {str(i) for i in range(12)}

    def not_found(request: httpx.Request, _n: int) -> httpx.Response | None:
        if json.loads(request.content)["userId"] in unknown:
            return httpx.Response(404, json={"statusCode": 404, "path": "/api/app-user/v2",
                                             "code": "ERR-AB-USR-14",
                                             "message": "User not found."}, request=request)
        return None

    outcomes, d = deliver([withdraw(i) for i in range(15)],
                          Recorder(mock_transport(app()), not_found), max_in_flight=1)
    assert statuses(outcomes) == {Status.QUARANTINED: 12, Status.DELIVERED: 3}
    assert not d.report().held


def test_a_flaky_api_gets_nobody_quarantined() -> None:
    """An API that fails 60% of all requests at random: nobody is the cause, so nobody is
    quarantined; what does not get through stays pending."""
    outcomes, _ = deliver([upsert(i) for i in range(600)], mock_transport(app(error_rate=0.6)))
    assert Status.QUARANTINED not in statuses(outcomes)
    assert statuses(outcomes)[Status.DELIVERED] > 0
