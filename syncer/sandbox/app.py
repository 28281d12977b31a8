"""The sandbox's logic: both APIs as their documents describe them, with no I/O.

``SandboxApp.handle`` takes one request (method, path, headers, body, and ``now``, the arrival time
in monotonic seconds) and returns a ``SandboxResponse``; the HTTP server and the in-process httpx
transport in ``server.py`` are thin shells around it. Nothing here sleeps: a slow or hanging answer
is a ``delay_seconds`` on the response, which the shell honours (or turns into a timeout).

Routes (Blux under ``/blux``, nachocode under ``/nachocode``, so the clients' base URLs are
``http://host:port/blux`` and ``http://host:port/nachocode``):

    POST        /blux/v2/applications/{APPLICATION_ID}/users/update-properties/bulk  blux.update
    POST        /blux/v2/applications/{APPLICATION_ID}/users/delete/bulk             blux.delete
    DELETE|POST /nachocode/api/app-user/v2                                   nachocode.withdraw
    GET         /_sandbox/state    the mirror and the counters (``snapshot()``)
    GET         /_sandbox/counts   the counters alone (the mirror may be large)
    GET|POST    /_sandbox/faults   read / partially update the faults (JSON object)
    POST        /_sandbox/reset    forget the mirror and the counters (the faults stay)

The checks run in the order of the documents' status codes (who you are, then what you sent), then
the faults: rate limit (429), ``error_rate`` (500), ``reject_user_ids`` (400). A request counts
toward the rate limit once it passed the checks and the limit (whatever a later fault answers);
every arrival at an endpoint, whatever its answer, counts toward ``max_requests_in_window``.
Messages name fields by path and user index and never echo a value, so they can be logged.
"""

from __future__ import annotations

import bisect
import copy
import json
import math
import random
import re
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final
from urllib.parse import unquote

from syncer.sandbox.documents import (
    Invalid,
    UserUpdate,
    parse_json,
    validate_delete,
    validate_update,
    validate_withdraw,
)
from syncer.sandbox.settings import (
    BLUX_DELETE,
    BLUX_UPDATE,
    DEFAULT_CONFIG,
    ENDPOINTS,
    NACHOCODE_WITHDRAW,
    Faults,
    SandboxConfig,
)

BLUX_PREFIX: Final = "/blux"
NACHOCODE_PREFIX: Final = "/nachocode"
NACHOCODE_PATH: Final = "/api/app-user/v2"  # as the documents' error envelope reports it

# How far back arrival times are kept, beyond one window, so that a request whose arrival time is
# older than the newest one seen (threads of the HTTP server race to the lock) is still counted
# exactly. The server's threads are milliseconds apart; a minute is ample.
ARRIVAL_HORIZON_SECONDS: Final = 60.0

JSON_CONTENT_TYPE: Final = (("Content-Type", "application/json; charset=utf-8"),)

_BLUX_ROUTE = re.compile(r"/v2/applications/([^/]+)/users/(update-properties|delete)/bulk")
# nachocode's documented error codes and messages.
_NACHO_MESSAGES: Final = {
    "ERR-AB-VAL-00": "Incorrect request. Server cannot understand request.",
    "ERR-AB-SGK-11": "Secret key not found.",
    "ERR-AB-SGK-13": "Incorrect secret key.",
    "ERR-AB-KSY-13": "Provided key information not found. Please check your key again.",
    "ERR-AB-AGK-11": "Api key not found.",
    "ERR-AB-ACS-21": "This app is unable to handle user preference.",
    "ERR-AB-ACS-22": "User already withdrawn.",
    "ERR-SANDBOX-RATE": "Too many requests.",
    "ERR-SANDBOX-FAULT": "Internal server error.",
}
NACHOCODE_SUCCESS_MESSAGE: Final = "User withdrawal process successfully executed."


@dataclass(frozen=True, slots=True)
class SandboxResponse:
    """One answer. The shell waits ``delay_seconds`` before sending it."""

    status: int
    body: object  # JSON-able
    headers: tuple[tuple[str, str], ...] = JSON_CONTENT_TYPE
    delay_seconds: float = 0.0
    endpoint: str | None = None
    summary: str = ""  # for the access log: counts and the reason of a refusal, never values

    def encode(self) -> bytes:
        return json.dumps(self.body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class ArrivalWindow:
    """Times of arrival at one endpoint, sorted, for exact sliding-window counts.

    A window of ``width`` seconds ending at ``x`` holds the arrivals ``t`` with
    ``x - width < t <= x``; the busiest window over a set of arrivals is the busiest one ending at
    one of them. Arrivals may come slightly out of order (within ``horizon`` seconds of the newest).
    """

    __slots__ = ("_latest", "_times", "horizon", "width")

    def __init__(self, width: float, horizon: float = ARRIVAL_HORIZON_SECONDS) -> None:
        self.width = width
        self.horizon = horizon
        self._times: list[float] = []
        self._latest = -math.inf

    def _count_ending_at(self, x: float) -> int:
        times = self._times
        return bisect.bisect_right(times, x) - bisect.bisect_right(times, x - self.width)

    def busiest_with(self, t: float) -> int:
        """The most arrivals any window containing ``t`` would hold once ``t`` is added."""
        best = self._count_ending_at(t) + 1
        times = self._times
        i = bisect.bisect_right(times, t)  # later arrivals whose window reaches back to t
        while i < len(times) and times[i] - self.width < t:
            best = max(best, self._count_ending_at(times[i]) + 1)
            i += 1
        return best

    def add(self, t: float) -> None:
        bisect.insort(self._times, t)
        if t > self._latest:
            self._latest = t
            cut = bisect.bisect_right(self._times, t - self.width - self.horizon)
            if cut > 1024 or (cut and cut * 2 > len(self._times)):
                del self._times[:cut]


@dataclass(slots=True)
class _EndpointStats:
    width: float
    total: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    max_in_window: int = 0
    first_at: float | None = None
    last_at: float | None = None
    arrivals: ArrivalWindow = field(init=False)
    accepted: ArrivalWindow = field(init=False)

    def __post_init__(self) -> None:
        self.arrivals = ArrivalWindow(self.width)
        self.accepted = ArrivalWindow(self.width)

    def arrive(self, now: float) -> None:
        self.max_in_window = max(self.max_in_window, self.arrivals.busiest_with(now))
        self.arrivals.add(now)
        self.first_at = now if self.first_at is None else min(self.first_at, now)
        self.last_at = now if self.last_at is None else max(self.last_at, now)


class SandboxApp:
    """Both APIs, in memory. Thread-safe: every call holds one lock."""

    def __init__(
        self, config: SandboxConfig = DEFAULT_CONFIG, faults: Faults | None = None
    ) -> None:
        self.config = config
        self.faults = faults if faults is not None else Faults()
        self._lock = threading.Lock()
        self._rng_seed = self.faults.seed
        self._rng = random.Random(self._rng_seed)
        self._users: dict[str, UserUpdate] = {}
        self._applied: Counter[str] = Counter()   # user id -> updates applied
        self._deleted: set[str] = set()
        self._withdrawn: set[str] = set()
        self._stats: dict[str, _EndpointStats] = {}
        self._landed: dict[str, list[tuple[str, float]]] = {}   # watched user -> (endpoint, at)
        self._clear()

    def _clear(self) -> None:
        self._users = {}
        self._applied = Counter()
        self._deleted = set()
        self._withdrawn = set()
        self._landed = {}
        self._stats = {name: _EndpointStats(self.config.window_seconds) for name in ENDPOINTS}

    def reset(self) -> None:
        """Forget the mirror and the counters; the faults and the random state stay."""
        with self._lock:
            self._clear()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return self._snapshot()

    def ever_updated(self) -> set[str]:
        """Every user id an update was ever applied to (whatever happened to it since)."""
        with self._lock:
            return set(self._applied)

    def watch(self, *user_ids: str) -> None:
        """Remember when a request that changed one of these users arrived (see
        :meth:`landed`); cheap, for measuring how long a change took to land."""
        with self._lock:
            for uid in user_ids:
                self._landed.setdefault(uid, [])

    def landed(self, user_id: str) -> list[tuple[str, float]]:
        """(endpoint, arrival time) of each accepted request that changed a watched user, in
        the clock of ``handle``'s ``now`` (the HTTP server's: ``time.monotonic``)."""
        with self._lock:
            return list(self._landed.get(user_id, ()))

    def _note(self, endpoint: str, uid: str, now: float) -> None:
        if self._landed:
            seen = self._landed.get(uid)
            if seen is not None:
                seen.append((endpoint, now))

    def user(self, user_id: str) -> dict[str, Any] | None:
        """One user of the Blux mirror (cheap, unlike ``snapshot`` on a large mirror)."""
        with self._lock:
            u = self._users.get(user_id)
            if u is None:
                return None
            return {"user_properties": copy.deepcopy(u.user_properties),
                    "custom_user_properties": copy.deepcopy(u.custom_user_properties)}

    def _snapshot(self, mirror: bool = True) -> dict[str, Any]:
        stats = self._stats
        return {
            "users": {} if not mirror else {
                uid: {
                    "user_properties": copy.deepcopy(u.user_properties),
                    "custom_user_properties": copy.deepcopy(u.custom_user_properties),
                }
                for uid, u in sorted(self._users.items())
            },
            "deleted_user_ids": sorted(self._deleted),
            "withdrawn_user_ids": sorted(self._withdrawn),
            "requests": {
                name: {
                    "total": s.total,
                    "by_status": {str(code): n for code, n in sorted(s.by_status.items())},
                }
                for name, s in stats.items()
            },
            "max_requests_in_window": {name: s.max_in_window for name, s in stats.items()},
            "updates_applied": {
                "total": sum(self._applied.values()),
                "users": len(self._applied),
                "users_more_than_once": sum(1 for n in self._applied.values() if n > 1),
            },
            "first_request_at": {name: s.first_at for name, s in stats.items()},
            "last_request_at": {name: s.last_at for name, s in stats.items()},
            "rates": {name: self.config.rate_for(name) for name in ENDPOINTS},
            "window_seconds": self.config.window_seconds,
            "faults": self.faults.to_json(),
        }

    # -- dispatch ---------------------------------------------------------------------------------

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, now: float
    ) -> SandboxResponse:
        """Answer one request. ``path`` is the URL path as sent (percent-encoded, query ignored)."""
        method = method.upper()
        path = path.split("?", 1)[0]
        lowered: dict[str, str] = {}
        for name, value in headers.items():
            key = name.lower()
            lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
        with self._lock:
            if path.startswith("/_sandbox/"):
                return self._control(method, path, body)
            endpoint, application_id = _route(method, path)
            if endpoint is None:
                return SandboxResponse(404, {"message": f"no such route: {method} {path[:200]}"})
            if self.faults.seed != self._rng_seed:
                self._rng_seed = self.faults.seed
                self._rng = random.Random(self._rng_seed)
            stats = self._stats[endpoint]
            stats.arrive(now)
            hang = self.faults.hang_rate > 0 and self._rng.random() < self.faults.hang_rate
            if endpoint == NACHOCODE_WITHDRAW:
                response = self._withdraw(lowered, body, now)
            else:
                response = self._blux(endpoint, application_id, lowered, body, now)
            stats.total += 1
            stats.by_status[response.status] += 1
            delay = self.faults.latency_seconds + (self.faults.hang_seconds if hang else 0.0)
            return replace(response, endpoint=endpoint, delay_seconds=delay)

    def _control(self, method: str, path: str, body: bytes) -> SandboxResponse:
        if path == "/_sandbox/state" and method == "GET":
            return SandboxResponse(200, self._snapshot())
        if path == "/_sandbox/counts" and method == "GET":   # without the (large) mirror
            state = self._snapshot(mirror=False)
            return SandboxResponse(200, state)
        if path == "/_sandbox/faults" and method == "GET":
            return SandboxResponse(200, self.faults.to_json())
        if path == "/_sandbox/faults" and method == "POST":
            try:
                data = parse_json(body)
                if not isinstance(data, dict):
                    raise Invalid("the body must be a JSON object of faults")
                self.faults.update_from_json(data)
            except (Invalid, ValueError) as exc:
                return SandboxResponse(400, {"message": str(exc)}, summary=str(exc))
            return SandboxResponse(200, self.faults.to_json())
        if path == "/_sandbox/reset" and method == "POST":
            self._clear()
            return SandboxResponse(200, {"message": "sandbox reset"})
        return SandboxResponse(404, {"message": f"no such route: {method} {path[:200]}"})

    def _rate_limited(self, endpoint: str, now: float) -> bool:
        stats = self._stats[endpoint]
        if stats.accepted.busiest_with(now) > self.config.rate_for(endpoint):
            return True
        stats.accepted.add(now)
        return False

    def _retry_after(self) -> tuple[tuple[str, str], ...]:
        seconds = max(1, math.ceil(self.config.window_seconds))
        return (*JSON_CONTENT_TYPE, ("Retry-After", str(seconds)))

    # -- Blux -------------------------------------------------------------------------------------

    def _blux(  # noqa: PLR0912 - the document's checks, one branch each, in its order
        self,
        endpoint: str,
        application_id: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
    ) -> SandboxResponse:
        if application_id != self.config.blux_application_id:
            message = "application not found: check application_id"
            return SandboxResponse(404, {"message": message}, summary=message)
        if headers.get("authorization") != self.config.blux_secret_key:
            message = (
                "unauthorized: the Authorization header must be the secret key itself "
                "(no 'Bearer' prefix)"
                if "authorization" in headers
                else "unauthorized: the Authorization header is missing"
            )
            return SandboxResponse(401, {"message": message}, summary=message)
        updates: list[UserUpdate] = []
        try:
            if _media_type(headers.get("content-type", "")) != "application/json":
                raise Invalid("Content-Type must be application/json")
            document = parse_json(body)
            if endpoint == BLUX_UPDATE:
                updates = validate_update(document)
                ids = [u.user_id for u in updates]
                count = f"users={len(ids)}"
            else:
                ids = validate_delete(document)
                count = f"user_ids={len(ids)}"
        except Invalid as exc:
            return SandboxResponse(400, {"message": str(exc)}, summary=str(exc))
        if self._rate_limited(endpoint, now):
            message = (
                f"rate limit exceeded: at most {self.config.rate_for(endpoint)} requests "
                f"per {self.config.window_seconds:g} s"
            )
            return SandboxResponse(429, {"message": message}, self._retry_after(), summary=count)
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            message = "internal server error (sandbox fault)"
            return SandboxResponse(500, {"message": message}, summary=count)
        for index, uid in enumerate(ids):
            if uid in self.faults.reject_user_ids:
                where = f"user_ids[{index}]"
                if endpoint == BLUX_UPDATE:
                    where = f"users[{index}].user_id"
                message = f"{where} is refused (sandbox fault reject_user_ids)"
                return SandboxResponse(400, {"message": message}, summary=f"{count} {message}")
        if endpoint == BLUX_UPDATE:
            for update in updates:
                self._apply_update(update)
                self._applied[update.user_id] += 1
        else:
            for uid in ids:
                self._users.pop(uid, None)
                self._deleted.add(uid)
        for uid in ids:
            self._note(endpoint, uid, now)
        return SandboxResponse(200, {}, summary=count)

    def _apply_update(self, update: UserUpdate) -> None:
        self._deleted.discard(update.user_id)
        current = self._users.get(update.user_id)
        if current is None:
            self._users[update.user_id] = update
            return
        self._users[update.user_id] = UserUpdate(
            update.user_id,
            {**current.user_properties, **update.user_properties},
            {**current.custom_user_properties, **update.custom_user_properties},
        )

    # -- nachocode --------------------------------------------------------------------------------

    def _withdraw(self, headers: Mapping[str, str], body: bytes, now: float) -> SandboxResponse:
        api_key = headers.get("x-api-key", "")
        secret_key = headers.get("x-secret-key", "")
        if not api_key:
            return _nacho_error(400, "ERR-AB-AGK-11", "x-api-key header missing")
        if not secret_key:
            return _nacho_error(400, "ERR-AB-SGK-11", "x-secret-key header missing")
        if api_key != self.config.nachocode_api_key:
            return _nacho_error(404, "ERR-AB-KSY-13", "unknown api key")
        if secret_key != self.config.nachocode_secret_key:
            return _nacho_error(401, "ERR-AB-SGK-13", "wrong secret key")
        try:
            if _media_type(headers.get("content-type", "")) != "application/json":
                raise Invalid("Content-Type must be application/json")
            user_id = validate_withdraw(parse_json(body))
        except Invalid as exc:
            return _nacho_error(400, "ERR-AB-VAL-00", str(exc))
        if self.faults.nachocode_disabled:
            return _nacho_error(403, "ERR-AB-ACS-21", "user management disabled (sandbox fault)")
        if self._rate_limited(NACHOCODE_WITHDRAW, now):
            return _nacho_error(429, "ERR-SANDBOX-RATE", "rate limited", self._retry_after())
        if self.faults.error_rate > 0 and self._rng.random() < self.faults.error_rate:
            return _nacho_error(500, "ERR-SANDBOX-FAULT", "sandbox fault error_rate")
        if user_id in self.faults.reject_user_ids:
            return _nacho_error(400, "ERR-AB-VAL-00", "userId refused (sandbox fault)")
        if user_id in self._withdrawn:
            return _nacho_error(410, "ERR-AB-ACS-22", "already withdrawn")
        self._withdrawn.add(user_id)
        self._note(NACHOCODE_WITHDRAW, user_id, now)
        return SandboxResponse(200, {"message": NACHOCODE_SUCCESS_MESSAGE}, summary="withdrawn")


def _nacho_error(
    status: int,
    code: str,
    reason: str,
    headers: tuple[tuple[str, str], ...] = JSON_CONTENT_TYPE,
) -> SandboxResponse:
    body = {
        "statusCode": status,
        "path": NACHOCODE_PATH,
        "code": code,
        "message": _NACHO_MESSAGES[code],
    }
    return SandboxResponse(status, body, headers, summary=f"{code} {reason}")


def _route(method: str, path: str) -> tuple[str | None, str]:
    """(endpoint, Blux application id) for an API path, or (None, "")."""
    if path.startswith(BLUX_PREFIX + "/") and method == "POST":
        match = _BLUX_ROUTE.fullmatch(path, len(BLUX_PREFIX))
        if match is not None:
            kind = BLUX_UPDATE if match.group(2) == "update-properties" else BLUX_DELETE
            return kind, unquote(match.group(1))
    if path == NACHOCODE_PREFIX + NACHOCODE_PATH and method in ("DELETE", "POST"):
        return NACHOCODE_WITHDRAW, ""
    return None, ""


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


