"""nachocode: withdraw a deleted user (one user a call), so its push tokens and consents go."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from syncer.config import NachocodeConfig
from syncer.destinations import (
    ACCEPTED,
    Answer,
    Reading,
    Request,
    encode,
    message_of,
    refused,
)
from syncer.destinations import classify as classify_answer
from syncer.errors import CredentialsRejected, DeliveryError, HeldBack, UserUnknown
from syncer.model import Endpoint, Op

WHO: Final = "nachocode"
ALREADY_WITHDRAWN: Final = "ERR-AB-ACS-22"
NOT_ENABLED: Final = "ERR-AB-ACS-21"
# Codes about the keys themselves (documented): missing secret, bad secret, missing API key,
# unknown API key, invalid API key type. No retry can fix them.
KEY_ERRORS: Final = frozenset({"ERR-AB-SGK-11", "ERR-AB-SGK-13", "ERR-AB-KSY-11",
                               "ERR-AB-KSY-13", "ERR-AB-AGK-11", "ERR-AB-AGK-12"})


def _code(body: bytes) -> str | None:
    """The error code of nachocode's error envelope (``{"statusCode", "path", "code",
    "message"}``); None when the body is not that envelope."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    code = data.get("code") if isinstance(data, dict) else None
    return code if isinstance(code, str) and code.strip() else None


def _own(answer: Answer) -> Reading:
    code = _code(answer.body)
    if answer.status == 410:  # already withdrawn: what we wanted
        return ACCEPTED
    if code in KEY_ERRORS or answer.status == 401:
        return CredentialsRejected(
            f"nachocode refused the keys ({answer.status} {code or 'no code'}): check "
            "[nachocode] api_key and secret_key")
    if answer.status == 404:
        # The unknown API key is ERR-AB-KSY-13 (above). A 404 in nachocode's envelope with
        # another code is about this request's user; one without the envelope did not come
        # from the API at all (a wrong base_url or path).
        if code is None:
            return refused(answer, WHO, "[nachocode] base_url")
        return UserUnknown(f"nachocode answered 404: {message_of(answer.body)}")
    if answer.status == 403:
        return HeldBack(
            f"nachocode cannot withdraw users for this app (403 {code or 'no code'}): the app "
            "user API needs a business membership; ask nachocode to enable it. Withdrawals are "
            "kept and sent once it is enabled.")
    return None


def classify(answer: Answer, now_epoch: float) -> DeliveryError | None:
    return classify_answer(answer, now_epoch, WHO, "[nachocode] base_url and method", _own)


class NachocodeWithdraw:
    endpoint = Endpoint.NACHOCODE_WITHDRAW
    batch_size = 1

    def __init__(self, config: NachocodeConfig) -> None:
        self.config = config
        self.rate = config.rate
        self.max_in_flight = config.max_in_flight or max(2, int(config.rate))
        self.url = f"{config.base_url}/api/app-user/v2"
        self.headers = {
            "x-api-key": config.api_key.reveal(),
            "x-secret-key": config.secret_key.reveal(),
            "Content-Type": "application/json",
        }

    def build(self, ops: Sequence[Op]) -> Request:
        (op,) = ops
        return Request(self.config.method, self.url, self.headers, encode({"userId": op.user_id}),
                       "[nachocode] base_url")

    def classify(self, answer: Answer, now_epoch: float) -> DeliveryError | None:
        return classify(answer, now_epoch)
