"""The endpoint circuit breaker, pure: health + outcome + now → new health.

Only signs that the endpoint is unwell are failures here (5xx, 408, 429, timeouts, refused or
broken connections: `AttemptResult.unwell`), and a 410. An event the receiver rejects (any
other 4xx, a redirect) spends its own retries and never reaches the breaker: it neither
counts toward a pause nor resets the streak, which only a 2xx does.

The usual words: a closed circuit delivers, an open one delivers nothing, a half-open one lets
a single probe through. The endpoint states an operator sees map onto them:

active (closed) ──5 failures in a row──► paused (open) ──cooldown over──► half-open: one probe
   │                                          ▲                                  │
   │                                          └──────── probe fails ─────────────┤ (longer cooldown)
   │                                                                 probe 2xx ──► active
   └── 410, or failing `disable_after` without a success ──► disabled (open until enabled by hand)
"""

from __future__ import annotations

from dataclasses import replace
from enum import Enum

from service.endpoint_health import EndpointHealth, EndpointState

THRESHOLD = 5  # consecutive failures that pause an endpoint
BASE_COOLDOWN = 5.0
MAX_COOLDOWN = 300.0
# How often a worker looks again at an endpoint whose circuit is open: it may be enabled (or
# probed) by another process meanwhile.
OPEN_RECHECK = 1.0


class Circuit(Enum):
    CLOSED = "closed"  # deliver at full concurrency
    HALF_OPEN = "half_open"  # the cooldown is over: one probe decides
    OPEN = "open"  # paused, disabled or held by a Retry-After: deliver nothing


def cooldown(pauses: int) -> float:
    """Doubles with every failed probe, up to MAX_COOLDOWN."""
    return min(BASE_COOLDOWN * 2.0 ** max(pauses - 1, 0), MAX_COOLDOWN)


def circuit(health: EndpointHealth, now: float) -> tuple[Circuit, float]:
    """What a worker may do now, and how long to wait while the circuit is open."""
    if health.status is EndpointState.DISABLED:
        return Circuit.OPEN, OPEN_RECHECK
    if health.hold_until is not None and now < health.hold_until:
        return Circuit.OPEN, health.hold_until - now
    if health.status is EndpointState.PAUSED:
        until = health.paused_until or 0.0
        return (Circuit.HALF_OPEN, 0.0) if now >= until else (Circuit.OPEN, until - now)
    return Circuit.CLOSED, 0.0


def after_success(health: EndpointHealth, now: float) -> EndpointHealth:
    """A 2xx closes the breaker; a disabled endpoint stays disabled (an answer in flight)."""
    disabled = health.status is EndpointState.DISABLED
    return replace(
        health,
        status=EndpointState.DISABLED if disabled else EndpointState.ACTIVE,
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
    if health.status is EndpointState.DISABLED:
        return failed
    if gone:
        return _disabled(failed, "410 Gone")
    if now - since >= disable_after:
        return _disabled(
            failed, f"failing without a success for {now - since:.0f}s (disable_after)"
        )
    if health.status is EndpointState.PAUSED and now < (health.paused_until or 0.0):
        return failed  # sent before the pause began: it neither probes nor extends the pause
    if failures >= THRESHOLD:
        pauses = health.pauses + 1
        return replace(
            failed, status=EndpointState.PAUSED, pauses=pauses, paused_until=now + cooldown(pauses)
        )
    return failed


def _disabled(health: EndpointHealth, reason: str) -> EndpointHealth:
    return replace(health, status=EndpointState.DISABLED, paused_until=None, disabled_reason=reason)


def enabled(health: EndpointHealth) -> EndpointHealth:
    """Re-enabled by hand: a fresh start, history kept."""
    return replace(
        health,
        status=EndpointState.ACTIVE,
        consecutive_failures=0,
        failing_since=None,
        paused_until=None,
        disabled_reason=None,
        pauses=0,
    )
