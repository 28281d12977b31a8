"""The destinations: Blux (bulk update, bulk delete) and nachocode (withdraw).

Each endpoint is a :class:`Sender`: it turns a batch of operations into one HTTP request and the
answer into nothing (2xx) or one of the errors of :mod:`syncer.errors`. Building the request and
classifying the answer are pure functions beside each client; the HTTP call is the only I/O, and
httpx errors are translated here, at the edge.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx

from syncer.errors import DeliveryError, EndpointRefused, RateLimited, RetriableError
from syncer.model import Endpoint, Op
from syncer.retry import parse_retry_after
from syncer.secret import scrub


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


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


async def send(client: httpx.AsyncClient, request: Request, timeout: float) -> Answer:
    """One HTTP exchange; network failures become :class:`RetriableError`."""
    try:
        response = await client.request(request.method, request.url, headers=request.headers,
                                        content=request.body, timeout=timeout)
    except httpx.TimeoutException as exc:
        raise RetriableError(f"no answer within {timeout:g}s ({type(exc).__name__})") from exc
    except httpx.TransportError as exc:
        raise RetriableError(f"connection failed ({type(exc).__name__})") from exc
    return Answer(response.status_code, {k.lower(): v for k, v in response.headers.items()},
                  response.content)


def wall_clock() -> float:
    return time.time()
