"""An endpoint's health as every process sees it, and the Redis hash that holds it.

The type sits below both the store (which reads and writes it) and delivery (whose breaker
decides its transitions), so neither imports the other for it. This module is the one owner
of the hash's field names and encodings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import StrEnum


class EndpointState(StrEnum):
    """What an operator sees (`/admin/endpoints`, `lms_webhooks_endpoint_state`)."""

    ACTIVE = "active"  # delivering
    PAUSED = "paused"  # the breaker is open: failing, waiting for a probe
    DISABLED = "disabled"  # 410 or failing for `disable_after`: until enabled by hand


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    status: EndpointState = EndpointState.ACTIVE
    consecutive_failures: int = 0
    failing_since: float | None = None
    paused_until: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None
    disabled_reason: str | None = None
    pauses: int = 0  # pauses in a row: the first, then one per failed probe
    hold_until: float | None = None  # a receiver's Retry-After holds every delivery until then

    def to_hash(self) -> dict[str, str]:
        """Every field as a string; None as ''."""
        return {k: "" if v is None else str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, raw: Mapping[str, str]) -> EndpointHealth:
        """The hash as written by `to_hash` (or partly, by `LAST_SUCCESS_FIELD`); a missing
        or empty field takes its default."""
        values: dict[str, object] = {}
        for field in fields(cls):
            value = raw.get(field.name)
            if value:
                values[field.name] = _DECODE[field.name](value)
        return cls(**values)  # type: ignore[arg-type]


# A success on a healthy endpoint writes only this field (no transaction): see EndpointStore.
LAST_SUCCESS_FIELD = "last_success_at"

_DECODE = {
    "status": EndpointState,
    "consecutive_failures": int,
    "failing_since": float,
    "paused_until": float,
    "last_error": str,
    "last_success_at": float,
    "disabled_reason": str,
    "pauses": int,
    "hold_until": float,
}
