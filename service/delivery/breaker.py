"""The endpoint circuit breaker, pure: health + outcome + now → new health.

active ──5 failures in a row──► paused ──cooldown over──► one probe ──2xx──► active
   │                              ▲                           │
   │                              └────────── failure ────────┘ (longer cooldown)
   └── 410, or failing `disable_after` without a success ──► disabled (until enabled by hand)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

ACTIVE, PAUSED, DISABLED = "active", "paused", "disabled"
THRESHOLD = 5  # consecutive failures that pause an endpoint
BASE_COOLDOWN = 5.0
MAX_COOLDOWN = 300.0
CLOSED_RECHECK = 1.0  # how often a worker looks again at a disabled endpoint


@dataclass(frozen=True, slots=True)
class EndpointHealth:
    status: str = ACTIVE
    consecutive_failures: int = 0
    failing_since: float | None = None
    paused_until: float | None = None
    last_error: str | None = None
    last_success_at: float | None = None
    disabled_reason: str | None = None
    pauses: int = 0  # pauses in a row: the first, then one per failed probe
    hold_until: float | None = None  # a receiver's Retry-After holds every delivery until then


class Gate(Enum):
    OPEN = "open"  # deliver at full concurrency
    PROBE = "probe"  # the cooldown is over: one delivery decides
    CLOSED = "closed"  # paused or disabled: deliver nothing


def cooldown(pauses: int) -> float:
    """Doubles with every failed probe, up to MAX_COOLDOWN."""
    return min(BASE_COOLDOWN * 2.0 ** max(pauses - 1, 0), MAX_COOLDOWN)


def gate(health: EndpointHealth, now: float) -> tuple[Gate, float]:
    """What a worker may do now, and how long to wait when it may do nothing."""
    if health.status == DISABLED:
        return Gate.CLOSED, CLOSED_RECHECK
    if health.hold_until is not None and now < health.hold_until:
        return Gate.CLOSED, health.hold_until - now
    if health.status == PAUSED:
        until = health.paused_until or 0.0
        return (Gate.PROBE, 0.0) if now >= until else (Gate.CLOSED, until - now)
    return Gate.OPEN, 0.0


def after_success(health: EndpointHealth, now: float) -> EndpointHealth:
    """A 2xx closes the breaker; a disabled endpoint stays disabled (an answer in flight)."""
    status = DISABLED if health.status == DISABLED else ACTIVE
    return replace(
        health,
        status=status,
        consecutive_failures=0,
        failing_since=None,
        paused_until=None,
        last_success_at=now,
        pauses=0,
    )


def after_failure(
    health: EndpointHealth,
    now: float,
    error: str,
    *,
    gone: bool,
    disable_after: float,
    retry_after: float | None = None,
) -> EndpointHealth:
    failures = health.consecutive_failures + 1
    since = health.failing_since if health.failing_since is not None else now
    hold = health.hold_until
    if retry_after is not None:  # the receiver asked for a break: every slot takes it
        hold = max(hold or 0.0, now + retry_after)
    failed = replace(
        health,
        consecutive_failures=failures,
        failing_since=since,
        last_error=error,
        hold_until=hold,
    )
    if health.status == DISABLED:
        return failed
    if gone:
        return replace(failed, status=DISABLED, paused_until=None, disabled_reason="410 Gone")
    if now - since >= disable_after:
        reason = f"failing without a success for {now - since:.0f}s (disable_after)"
        return replace(failed, status=DISABLED, paused_until=None, disabled_reason=reason)
    if health.status == PAUSED and now < (health.paused_until or 0.0):
        return failed  # sent before the pause began: it neither probes nor extends the pause
    if failures >= THRESHOLD:
        pauses = health.pauses + 1
        return replace(failed, status=PAUSED, pauses=pauses, paused_until=now + cooldown(pauses))
    return failed


def enabled(health: EndpointHealth) -> EndpointHealth:
    """Re-enabled by hand: a fresh start, history kept."""
    return replace(
        health,
        status=ACTIVE,
        consecutive_failures=0,
        failing_since=None,
        paused_until=None,
        disabled_reason=None,
        pauses=0,
    )
