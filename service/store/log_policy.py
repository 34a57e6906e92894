"""How long the delivery log keeps events, and how many per endpoint (docs/architecture.md,
The delivery log): what every script that writes the log is told."""

from __future__ import annotations

from dataclasses import dataclass

from service.config import DeliverySettings

# A logged event's hash outlives its retention by this much at most: the trims that run with
# every commit remove it on time; the TTL only catches those that no later commit trims.
TTL_MARGIN_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class LogPolicy:
    retention_ms: int
    max_per_endpoint: int

    @classmethod
    def of(cls, delivery: DeliverySettings) -> LogPolicy:
        return cls(int(delivery.log_retention * 1000), delivery.log_max_per_endpoint)

    @property
    def ttl_ms(self) -> int:
        return self.retention_ms + TTL_MARGIN_MS


DEFAULT_LOG = LogPolicy.of(DeliverySettings())
