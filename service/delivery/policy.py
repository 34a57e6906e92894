"""What an attempt's answer means and what happens next, pure: `now` and randomness passed in."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from service.httpspec import RECEIVER_RETRY_AFTER, StatusClass, retry_after_seconds, status_class

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
    # A sign that the endpoint itself is unwell (5xx, 408, 429, no answer): counts toward
    # pausing it. Any other failure (a 4xx, a redirect, our own bug) is about this one event
    # and spends only its retries: a few events a receiver rejects never hold back the rest.
    unwell: bool = False


# What says the endpoint is unwell rather than this event unwanted (CONTRACT §4).
_UNWELL = frozenset({StatusClass.SERVER_ERROR, StatusClass.RATE_LIMITED})


class Attempt(NamedTuple):
    """One POST and what came of it (a tuple: one is made per delivery, and a frozen
    dataclass costs several times as much to make)."""

    result: AttemptResult
    started_at: float  # epoch seconds, on the service's clock
    duration: float  # seconds
    response: bytes | None = None  # the first bytes of the answer's body, as read


class Action(Enum):
    ACK = "ack"
    RETRY = "retry"
    DEAD = "dead"
    HOLD = "hold"  # keep it queued for when the endpoint is enabled again


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    due: float | None = None  # epoch seconds of the next attempt, for RETRY and HOLD


def classify(
    status: int | None,
    retry_after: str | None = None,
    error: str | None = None,
    *,
    now: float,
) -> AttemptResult:
    """Map an HTTP status (None: timeout or broken connection) to a verdict."""
    if status is None:
        return AttemptResult(Verdict.RETRY, None, error or "no response", unwell=True)
    kind = status_class(status)
    if kind is StatusClass.SUCCESS:
        return AttemptResult(Verdict.SUCCESS, status)
    if kind is StatusClass.GONE:
        return AttemptResult(Verdict.GONE, status, "410 Gone: endpoint disabled")
    honoured = None
    if status in RECEIVER_RETRY_AFTER:
        honoured = retry_after_seconds(retry_after, now=now, cap=MAX_RETRY_AFTER)
    reason = "redirects are not followed" if kind is StatusClass.REDIRECT else None
    return AttemptResult(
        Verdict.RETRY,
        status,
        error or reason or f"HTTP {status}",
        retry_after=honoured,
        unwell=kind in _UNWELL,
    )


def crashed(error: str) -> AttemptResult:
    """An attempt our own code failed (a bug while signing, sending or classifying): a failed
    attempt of this event, so it follows the schedule to the dead letters instead of coming
    back every lease forever. Says nothing of the endpoint, so the breaker ignores it."""
    return AttemptResult(Verdict.RETRY, None, f"delivery crashed: {error}")


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
