"""What the sandbox accepts (credentials, rate limits) and the faults it can be told to inject."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Final

BLUX_UPDATE: Final = "blux.update"
BLUX_DELETE: Final = "blux.delete"
NACHOCODE_WITHDRAW: Final = "nachocode.withdraw"
ENDPOINTS: Final = (BLUX_UPDATE, BLUX_DELETE, NACHOCODE_WITHDRAW)


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """The credentials the sandbox accepts and the rate limits it enforces (requests per window)."""

    blux_application_id: str = "sandbox-app"
    blux_secret_key: str = "sandbox-blux-secret"  # noqa: S105
    nachocode_api_key: str = "sandbox-nacho-api-key"
    nachocode_secret_key: str = "sandbox-nacho-secret"  # noqa: S105
    update_rate: int = 20
    delete_rate: int = 100
    withdraw_rate: int = 10
    window_seconds: float = 1.0

    def rate_for(self, endpoint: str) -> int:
        return {
            BLUX_UPDATE: self.update_rate,
            BLUX_DELETE: self.delete_rate,
            NACHOCODE_WITHDRAW: self.withdraw_rate,
        }[endpoint]


DEFAULT_CONFIG: Final = SandboxConfig()


@dataclass
class Faults:
    """Misbehaviour to inject; mutable, and read afresh on every request."""

    error_rate: float = 0.0  # share of requests answered 500 (after auth and validation)
    hang_rate: float = 0.0  # share of requests whose answer is delayed by hang_seconds
    hang_seconds: float = 30.0
    latency_seconds: float = 0.0  # added to every API answer
    reject_user_ids: frozenset[str] = frozenset()  # a request carrying one of these gets 400
    nachocode_disabled: bool = False  # every withdraw answers 403 ERR-AB-ACS-21
    seed: int | None = None  # seed of the random draws (None: unpredictable)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> Faults:  # noqa: PLR0912 - one per fault
        """Build faults from a JSON object; missing keys take their defaults.

        Raises ValueError naming the offending key.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(k for k in data if k not in names)
        if unknown:
            raise ValueError(f"unknown fault {unknown[0]!r}; known: {', '.join(sorted(names))}")
        faults = cls()
        for key in ("error_rate", "hang_rate"):
            if key in data:
                value = _number(data[key], key)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"{key} must be between 0 and 1")
                setattr(faults, key, value)
        for key in ("hang_seconds", "latency_seconds"):
            if key in data:
                value = _number(data[key], key)
                if value < 0.0:
                    raise ValueError(f"{key} must not be negative")
                setattr(faults, key, value)
        if "reject_user_ids" in data:
            ids = data["reject_user_ids"]
            if not isinstance(ids, list | tuple | set | frozenset):
                raise ValueError("reject_user_ids must be an array of user ids")
            normalised: set[str] = set()
            for item in ids:
                if isinstance(item, bool) or not isinstance(item, str | int):
                    raise ValueError("reject_user_ids must hold strings or integers")
                normalised.add(str(item))
            faults.reject_user_ids = frozenset(normalised)
        if "nachocode_disabled" in data:
            flag = data["nachocode_disabled"]
            if not isinstance(flag, bool):
                raise ValueError("nachocode_disabled must be true or false")
            faults.nachocode_disabled = flag
        if "seed" in data:
            seed = data["seed"]
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise ValueError("seed must be an integer or null")
            faults.seed = seed
        return faults

    def to_json(self) -> dict[str, object]:
        return {
            "error_rate": self.error_rate,
            "hang_rate": self.hang_rate,
            "hang_seconds": self.hang_seconds,
            "latency_seconds": self.latency_seconds,
            "reject_user_ids": sorted(self.reject_user_ids),
            "nachocode_disabled": self.nachocode_disabled,
            "seed": self.seed,
        }

    def update_from_json(self, data: Mapping[str, object]) -> None:
        """Apply a partial update (all or nothing: on ValueError nothing changed)."""
        merged = Faults.from_json({**self.to_json(), **data})
        for f in fields(self):
            setattr(self, f.name, getattr(merged, f.name))


def _number(value: object, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number")
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"{key} must be finite")
    return result
