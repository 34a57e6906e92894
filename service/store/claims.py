"""A claimed delivery and what earlier attempts of it left behind (the meta hash's JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class DeliveryMeta:
    """What earlier attempts of one event left behind."""

    attempts: int = 0
    last_error: str | None = None
    last_status: int | None = None
    last_attempt_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # the W3C traceparent of the commit that queued it (written with it while tracing is on,
    # see service/tracing.py): its attempts' spans are children of that commit's
    traceparent: str = ""

    def as_dict(self) -> dict[str, Any]:
        """What the admin API shows of it (the trace context is not the operator's)."""
        return {
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "last_attempt_at": self.last_attempt_at,
            **self.extra,
        }

    def encode(self) -> str:
        data = self.as_dict()
        if self.traceparent:  # kept through retries: every attempt joins the same trace
            data["traceparent"] = self.traceparent
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | None) -> DeliveryMeta:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            attempts=int(data.pop("attempts", 0)),
            last_error=data.pop("last_error", None),
            last_status=data.pop("last_status", None),
            last_attempt_at=data.pop("last_attempt_at", None),
            traceparent=str(data.pop("traceparent", "") or ""),
            extra=data,
        )


@dataclass(slots=True)
class ClaimedEvent:
    event_id: str
    body: str
    meta: DeliveryMeta
    # the claim's score (LEASED + its expiry, ms on Redis' clock), which fences every write
    token: int
    # when this process takes the claim to run out, on its own clock (it cannot read Redis'):
    # the claim's length from just before it was claimed
    held_until: float = 0.0
    # the record of its last attempt, for the delivery log, written with its ack
    record: str = ""
