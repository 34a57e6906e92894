"""An endpoint's last hour as the overview shows it, from the delivery log's recent attempts.

The log is shared by every replica, so every replica shows the same figures (the process's
Prometheus counters would show only its own deliveries, and since it started).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from service.contract.admin import Attempt

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class HourStats:
    attempts: int
    succeeded: int
    p50_ms: float | None
    p95_ms: float | None
    # the attempts read reached back less than an hour: the figures cover only part of it
    partial: bool

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.attempts if self.attempts else None


def _percentile(sorted_values: list[float], fraction: float) -> float:
    # nearest rank: a value that was measured, not an interpolation between two
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def _succeeded(attempt: Attempt) -> bool:
    return attempt.status is not None and 200 <= attempt.status < 300


def last_hour(attempts: Iterable[Attempt], now_ms: int, *, read_limit: int) -> HourStats:
    """`attempts`: the endpoint's most recent ones (at most `read_limit`), any order."""
    seen = list(attempts)
    recent = [a for a in seen if a.started_at_ms > now_ms - HOUR_MS]
    durations = sorted(a.duration_ms for a in recent)
    return HourStats(
        attempts=len(recent),
        succeeded=sum(_succeeded(a) for a in recent),
        p50_ms=_percentile(durations, 0.5) if durations else None,
        p95_ms=_percentile(durations, 0.95) if durations else None,
        partial=len(seen) >= read_limit and len(recent) == len(seen),
    )
