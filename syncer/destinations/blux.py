"""Blux: bulk update of user properties (<= 100 users a call) and bulk delete (<= 3000 ids)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from syncer.config import BluxConfig
from syncer.destinations import Answer, Reading, Request, encode
from syncer.destinations import classify as classify_answer
from syncer.errors import CredentialsRejected, DeliveryError
from syncer.model import Endpoint, Op

WHO: Final = "Blux"
BASE_URL_KEY: Final = "[blux] base_url"


def _headers(config: BluxConfig) -> dict[str, str]:
    return {"Authorization": config.secret_key.reveal(), "Content-Type": "application/json"}


def _own(answer: Answer) -> Reading:
    if answer.status in (401, 403):
        return CredentialsRejected(
            f"Blux refused the secret key ({answer.status}): check [blux] secret_key "
            "(or secret_key_file)")
    if answer.status == 404:
        return CredentialsRejected(
            "Blux answered 404: check [blux] base_url and application_id")
    return None


def classify(answer: Answer, now_epoch: float) -> DeliveryError | None:
    return classify_answer(answer, now_epoch, WHO, "[blux] base_url (https, no redirect)", _own)


class BluxUpdate:
    endpoint = Endpoint.BLUX_UPDATE

    def __init__(self, config: BluxConfig) -> None:
        self.config = config
        self.batch_size = config.update_batch_size
        self.rate = config.update_rate
        self.max_in_flight = config.max_in_flight or max(2, int(config.update_rate))
        self.url = (f"{config.base_url}/v2/applications/{config.application_id}"
                    "/users/update-properties/bulk")

    def build(self, ops: Sequence[Op]) -> Request:
        users = []
        for op in ops:
            assert op.payload is not None
            users.append(op.payload.body(op.user_id))
        return Request("POST", self.url, _headers(self.config), encode({"users": users}),
                       BASE_URL_KEY)

    def classify(self, answer: Answer, now_epoch: float) -> DeliveryError | None:
        return classify(answer, now_epoch)


class BluxDelete:
    endpoint = Endpoint.BLUX_DELETE

    def __init__(self, config: BluxConfig) -> None:
        self.config = config
        self.batch_size = config.delete_batch_size
        self.rate = config.delete_rate
        self.max_in_flight = config.max_in_flight or max(2, min(16, int(config.delete_rate)))
        self.url = f"{config.base_url}/v2/applications/{config.application_id}/users/delete/bulk"

    def build(self, ops: Sequence[Op]) -> Request:
        return Request("POST", self.url, _headers(self.config),
                       encode({"user_ids": [op.user_id for op in ops]}), BASE_URL_KEY)

    def classify(self, answer: Answer, now_epoch: float) -> DeliveryError | None:
        return classify(answer, now_epoch)
