"""A claimed delivery and what earlier attempts of it left behind (the meta hash's JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from service import jsonfmt
from service.store import log_body


@dataclass(slots=True)
class DeliveryMeta:
    """What earlier attempts of one event left behind."""

    attempts: int = 0
    last_error: str | None = None
    last_status: int | None = None
    last_attempt_at: float | None = None
    # fields of the meta this version does not name, written back as they were read (an
    # event retried by this version keeps what another wrote); never shown
    extra: dict[str, Any] = field(default_factory=dict)
    # the W3C traceparent of the commit that queued it (written with it while tracing is on,
    # see service/tracing.py): its attempts' spans are children of that commit's
    traceparent: str = ""

    def encode(self) -> str:
        data = {
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "last_attempt_at": self.last_attempt_at,
            **self.extra,
        }
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


class ClaimedHead(NamedTuple):
    """What delivery reads of an event besides its bytes, read once by the store as it
    claims the event: its type and timestamp, which its body opens with."""

    type: str  # "": the body names none
    timestamp: str  # ISO 8601, when its change was detected; "": the body names none

    @classmethod
    def of(cls, event_id: str, body: bytes) -> ClaimedHead:
        """From the body's envelope (log_body.opening), without parsing its `data`; from the
        parsed JSON for a body in another form (queued by a tool or a test)."""
        opened = log_body.opening(event_id, body)
        if opened is not None:
            return cls(*opened)
        try:
            event = jsonfmt.loads(body)
        except ValueError:
            return cls("", "")
        if not isinstance(event, dict):
            return cls("", "")
        kind, timestamp = event.get("type"), event.get("timestamp")
        return cls(
            kind if isinstance(kind, str) else "",
            timestamp if isinstance(timestamp, str) else "",
        )


@dataclass(slots=True)
class ClaimedEvent:
    event_id: str
    body: bytes  # as queued: the very bytes signed and sent
    head: ClaimedHead
    meta: DeliveryMeta
    # the claim's score (LEASED + its expiry, ms on Redis' clock), which fences every write
    token: int
    # when this process takes the claim to run out, on its own clock (it cannot read Redis'):
    # the claim's length from just before it was claimed
    held_until: float = 0.0
    # the record of its last attempt, for the delivery log, written with its ack
    record: str = ""
