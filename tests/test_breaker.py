"""The circuit breaker's transitions, as a table."""

from __future__ import annotations

from dataclasses import replace

import pytest

from service.delivery.breaker import (
    BASE_COOLDOWN,
    MAX_COOLDOWN,
    OPEN_RECHECK,
    THRESHOLD,
    Circuit,
    after_failure,
    after_success,
    circuit,
    cooldown,
    enabled,
)
from service.endpoint_health import EndpointHealth, EndpointState

ACTIVE, PAUSED, DISABLED = EndpointState

NOW = 1_000_000.0
DAY = 86400.0


def failed(n: int, since: float = NOW) -> EndpointHealth:
    return EndpointHealth(consecutive_failures=n, failing_since=since, last_error="HTTP 500")


@pytest.mark.parametrize(
    ("before", "gone", "status", "failures"),
    [
        (EndpointHealth(), False, ACTIVE, 1),
        (failed(THRESHOLD - 2), False, ACTIVE, THRESHOLD - 1),
        (failed(THRESHOLD - 1), False, PAUSED, THRESHOLD),  # the threshold pauses
        (EndpointHealth(), True, DISABLED, 1),  # 410 disables at once
        (failed(2, since=NOW - 5 * DAY), False, DISABLED, 3),  # disable_after reached
        (replace(failed(9), status=DISABLED, disabled_reason="410 Gone"), False, DISABLED, 10),
    ],
)
def test_failure_transitions(
    before: EndpointHealth, gone: bool, status: str, failures: int
) -> None:
    after = after_failure(before, NOW, "HTTP 500", gone=gone, disable_after=5 * DAY)
    assert after.status == status
    assert after.consecutive_failures == failures
    assert after.last_error == "HTTP 500"
    assert after.failing_since == (before.failing_since or NOW)
    if status == PAUSED:
        assert after.paused_until == NOW + BASE_COOLDOWN and after.pauses == 1


def test_cooldown_doubles_per_failed_probe_up_to_a_cap() -> None:
    assert cooldown(1) == BASE_COOLDOWN
    assert cooldown(2) == 2 * BASE_COOLDOWN
    assert cooldown(30) == MAX_COOLDOWN
    paused = after_failure(failed(THRESHOLD - 1), NOW, "x", gone=False, disable_after=DAY)
    # a failure sent before the pause began does not extend it
    straggler = after_failure(paused, NOW + 1, "x", gone=False, disable_after=DAY)
    assert straggler.paused_until == paused.paused_until and straggler.pauses == 1
    # the probe after the cooldown fails: paused again, twice as long
    probe = after_failure(straggler, NOW + BASE_COOLDOWN, "x", gone=False, disable_after=DAY)
    assert probe.pauses == 2 and probe.paused_until == NOW + 3 * BASE_COOLDOWN


@pytest.mark.parametrize(
    ("health", "expected"),
    [
        (EndpointHealth(), (Circuit.CLOSED, 0.0)),
        (EndpointHealth(status=PAUSED, paused_until=NOW + 3), (Circuit.OPEN, 3.0)),
        (EndpointHealth(status=PAUSED, paused_until=NOW), (Circuit.HALF_OPEN, 0.0)),
        (EndpointHealth(status=DISABLED), (Circuit.OPEN, OPEN_RECHECK)),
        (EndpointHealth(hold_until=NOW + 2), (Circuit.OPEN, 2.0)),  # a receiver's Retry-After
    ],
)
def test_circuit(health: EndpointHealth, expected: tuple[Circuit, float]) -> None:
    assert circuit(health, NOW) == expected


def test_success_closes_a_paused_breaker_but_not_a_disabled_one() -> None:
    paused = replace(failed(THRESHOLD), status=PAUSED, paused_until=NOW)
    closed = after_success(paused, NOW + 1)
    assert (closed.status, closed.consecutive_failures, closed.failing_since) == (ACTIVE, 0, None)
    assert closed.last_success_at == NOW + 1
    disabled = replace(failed(3), status=DISABLED, disabled_reason="410 Gone")
    assert after_success(disabled, NOW).status == DISABLED


def test_enable_starts_fresh() -> None:
    disabled = replace(failed(7), status=DISABLED, disabled_reason="410 Gone")
    health = enabled(disabled)
    assert health.status == ACTIVE and health.consecutive_failures == 0
    assert health.disabled_reason is None and health.last_error == "HTTP 500"


def test_health_round_trips_through_its_redis_hash() -> None:
    health = EndpointHealth(
        status=PAUSED,
        consecutive_failures=6,
        failing_since=NOW,
        paused_until=NOW + 5,
        last_error="HTTP 503",
        pauses=2,
        hold_until=NOW + 1.5,
    )
    encoded = health.to_hash()
    assert encoded["status"] == "paused" and encoded["disabled_reason"] == ""
    assert EndpointHealth.from_hash(encoded) == health
    assert EndpointHealth.from_hash({}) == EndpointHealth()  # a new endpoint
