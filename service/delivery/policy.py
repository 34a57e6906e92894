"""What an attempt's answer means and what happens next, pure: `now` and randomness passed in."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

JITTER = 0.2  # ±20% on every scheduled delay
MAX_RETRY_AFTER = 24 * 3600.0  # a receiver's Retry-After is honoured up to a day


class Verdict(Enum):
    SUCCESS = "success"
    RETRY = "retry"
    GONE = "gone"  # 410: the endpoint is disabled at once


@dataclass(frozen=True, slots=True)
class AttemptResult:
    verdict: Verdict
    status: int | None
    error: str | None = None
    retry_after: float | None = None


class Action(Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"
    HOLD = "hold"  # keep it queued for when the endpoint is enabled again


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    due: float | None = None  # epoch seconds of the next attempt, for RETRY and HOLD


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (HTTP dates are rare for webhooks and treated as absent)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def classify(
    status: int | None, retry_after: str | None = None, error: str | None = None
) -> AttemptResult:
    """Map an HTTP status (None: timeout or broken connection) to a verdict."""
    if status is None:
        return AttemptResult(Verdict.RETRY, None, error or "no response")
    if 200 <= status < 300:
        return AttemptResult(Verdict.SUCCESS, status)
    if status == 410:
        return AttemptResult(Verdict.GONE, status, "410 Gone: endpoint disabled")
    honoured = parse_retry_after(retry_after) if status in (429, 503) else None
    reason = "redirects are not followed" if 300 <= status < 400 else None
    return AttemptResult(
        Verdict.RETRY, status, error or reason or f"HTTP {status}", retry_after=honoured
    )


def decide(
    result: AttemptResult,
    attempts_made: int,
    schedule: Sequence[float],
    now: float,
    rng: random.Random,
) -> Decision:
    """`attempts_made` counts this attempt. The schedule lists delays after each failure."""
    if result.verdict is Verdict.SUCCESS:
        return Decision(Action.ACK)
    if result.verdict is Verdict.GONE:
        return Decision(Action.HOLD, now)
    if attempts_made > len(schedule):
        return Decision(Action.DEAD)
    delay = schedule[attempts_made - 1] * rng.uniform(1 - JITTER, 1 + JITTER)
    if result.retry_after is not None:
        delay = max(delay, result.retry_after)
    return Decision(Action.RETRY, now + delay)
