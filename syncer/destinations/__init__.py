"""The destinations: Blux (bulk update, bulk delete) and nachocode (withdraw).

Each endpoint is a :class:`Sender`: it turns a batch of operations into one HTTP request and the
answer into nothing (2xx) or one of the errors of :mod:`syncer.errors`. Building the request and
classifying the answer are pure functions beside each client; the HTTP call is the only I/O, and
httpx errors are translated here, at the edge.
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import httpx

from syncer.errors import (
    DeliveryError,
    EndpointRefused,
    RateLimited,
    RejectedError,
    RetriableError,
)
from syncer.model import Endpoint, Op
from syncer.retry import parse_retry_after
from syncer.secret import scrub


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    config_key: str = ""   # what to check when the host cannot be reached: "[blux] base_url"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class Sender(Protocol):
    endpoint: Endpoint
    batch_size: int
    rate: float
    max_in_flight: int

    def build(self, ops: Sequence[Op]) -> Request: ...

    def classify(self, answer: Answer, now_epoch: float) -> DeliveryError | None: ...


def encode(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def message_of(body: bytes, limit: int = 200) -> str:
    """A short, scrubbed reason from an error body (JSON ``message``/``code`` or the text)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        parts = [str(data[k]) for k in ("code", "message", "error", "detail") if data.get(k)]
        if parts:
            text = ": ".join(parts)
    return scrub(" ".join(text.split())[:limit]) or "(empty answer)"


# Answers about the content of a request: split the batch, quarantine the users that cause it.
CONTENT_ERRORS = frozenset({400, 413, 422})


class _Accepted:
    """A destination's own reading of an answer that is not a 2xx but means done (nachocode's
    410 "already withdrawn")."""


ACCEPTED: Final = _Accepted()
Reading = DeliveryError | _Accepted | None   # None: nothing special about this answer


def classify(answer: Answer, now_epoch: float, who: str, check: str,
             own: Callable[[Answer], Reading]) -> DeliveryError | None:
    """What an answer means, the same ladder for every destination: a 2xx is done; then the
    destination's ``own`` reading (its credentials errors, its 403/404/410); then what every
    destination treats alike (429, 408, 5xx: try again later); then 400/413/422 (the content:
    narrow the batch down); anything else refuses every request whatever it holds (a
    redirect, 405, 415: ``check`` names the config keys to look at)."""
    if 200 <= answer.status < 300:
        return None
    reading = own(answer)
    if isinstance(reading, _Accepted):
        return None
    if reading is not None:
        return reading
    found = transient(answer, now_epoch, who)
    if found is not None:
        return found
    if answer.status in CONTENT_ERRORS:
        return RejectedError(f"{who} answered {answer.status}: {message_of(answer.body)}")
    return refused(answer, who, check)


def refused(answer: Answer, who: str, check: str) -> EndpointRefused:
    """Any other answer refuses the request whatever it holds (a redirect, 405, 415...)."""
    return EndpointRefused(f"{who} answered {answer.status} ({message_of(answer.body)}): "
                           f"check {check}; nothing is quarantined, everything stays pending")


def transient(answer: Answer, now_epoch: float, who: str) -> DeliveryError | None:
    """The answers every destination treats alike: 429, 408, 5xx."""
    if answer.status == 429:
        after = parse_retry_after(answer.headers.get("retry-after"), now_epoch)
        return RateLimited(f"{who} answered 429 (rate limited)", after)
    if answer.status == 408 or answer.status >= 500:
        after = parse_retry_after(answer.headers.get("retry-after"), now_epoch)
        err = RetriableError(f"{who} answered {answer.status}: {message_of(answer.body)}")
        if after is not None:
            return RateLimited(str(err), after)
        return err
    return None


async def send(client: httpx.AsyncClient, request: Request, timeout: float,
               written: Callable[[], None] | None = None) -> Answer:
    """One HTTP exchange; network failures become :class:`RetriableError`, naming the server
    (scheme, host and port only) and, when it cannot be reached, the config key to check.
    ``written`` is called once the request line and headers were handed to the network (httpx's
    transport reports it through the ``trace`` extension; other transports never call it)."""
    extensions: dict[str, object] = {}
    if written is not None:
        async def trace(event: str, info: object) -> None:
            if event.endswith("send_request_headers.complete"):
                written()
        extensions["trace"] = trace
    try:
        response = await client.request(request.method, request.url, headers=request.headers,
                                        content=request.body, timeout=timeout,
                                        extensions=extensions)
    except httpx.ConnectTimeout as exc:
        raise RetriableError(f"cannot connect to {origin(request.url)} (no answer within "
                             f"{timeout:g}s){_check(request)}") from exc
    except httpx.TimeoutException as exc:
        raise RetriableError(f"no answer from {origin(request.url)} within {timeout:g}s "
                             f"({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise RetriableError(f"cannot connect to {origin(request.url)} "
                             f"({_connect_failure(exc)}){_check(request)}") from exc
    except httpx.TransportError as exc:
        raise RetriableError(f"connection to {origin(request.url)} failed "
                             f"({type(exc).__name__})") from exc
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                  response.content)


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL: no user info, path or query (they may hold secrets)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return "(an invalid URL)"
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    port = parsed.port or {"http": 80, "https": 443}.get(parsed.scheme)
    return f"{parsed.scheme}://{host}" + (f":{port}" if port else "")


def _check(request: Request) -> str:
    return f": check {request.config_key}" if request.config_key else ""


def _connect_failure(exc: httpx.ConnectError) -> str:
    """Why a connection could not be made, in words (from the OS error under the httpx one;
    the exceptions' own text is not shown)."""
    seen: BaseException | None = exc
    for _ in range(10):   # the chain: httpx -> httpcore -> OSError(s)
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return "connection refused"
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, ssl.SSLError):
            return "TLS handshake failed"
        if isinstance(seen, OSError) and seen.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return "network unreachable"
        seen = seen.__cause__ or seen.__context__
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "host name not found"
    return f"connection failed, {type(exc).__name__}"
