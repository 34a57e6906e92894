"""Delivery policy: what each answer means, when the next attempt is."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from service.delivery.policy import Action, Verdict, classify, decide

SCHEDULE = [5.0, 300.0, 1800.0]
NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("status", "retry_after", "verdict", "honoured"),
    [
        (200, None, Verdict.SUCCESS, None),
        (204, None, Verdict.SUCCESS, None),
        (299, None, Verdict.SUCCESS, None),
        (301, None, Verdict.RETRY, None),  # redirects are never followed
        (400, None, Verdict.RETRY, None),
        (410, None, Verdict.GONE, None),
        (429, "120", Verdict.RETRY, 120.0),
        (503, "7", Verdict.RETRY, 7.0),
        (500, "7", Verdict.RETRY, None),  # Retry-After counts on 429/503 only
        (429, "soon", Verdict.RETRY, None),
        (429, "999999999", Verdict.RETRY, 86400.0),  # clamped
        (503, "Thu, 01 Jan 1970 00:00:00 GMT", Verdict.RETRY, 0.0),  # an HTTP date, past
        (
            429,
            format_datetime(datetime.fromtimestamp(NOW + 4, UTC), usegmt=True),
            Verdict.RETRY,
            4.0,
        ),
        (None, None, Verdict.RETRY, None),  # timeout or broken connection
    ],
)
def test_classify(
    status: int | None, retry_after: str | None, verdict: Verdict, honoured: float | None
) -> None:
    result = classify(status, retry_after, now=NOW)
    assert result.verdict is verdict
    assert result.retry_after == honoured
    assert (result.error is None) == (verdict is Verdict.SUCCESS)


@pytest.mark.parametrize("attempt", [1, 2, 3])
def test_retry_follows_schedule_with_jitter(attempt: int) -> None:
    rng = random.Random(attempt)
    delays = [
        decide(classify(500, now=NOW), attempt, SCHEDULE, NOW, rng).due or 0.0 for _ in range(300)
    ]
    base = SCHEDULE[attempt - 1]
    assert all(0.8 * base <= d - NOW <= 1.2 * base for d in delays)
    assert max(delays) - min(delays) > 0.2 * base  # jitter really spreads them


@pytest.mark.parametrize(
    ("status", "retry_after", "attempt", "action", "min_delay"),
    [
        (200, None, 1, Action.ACK, None),
        (500, None, 4, Action.DEAD, None),  # the schedule's 3 retries are spent
        (410, None, 1, Action.HOLD, 0.0),
        (429, "600", 1, Action.RETRY, 600.0),  # Retry-After longer than the schedule wins
        (429, "1", 2, Action.RETRY, 240.0),  # never shorter than the schedule (300 - 20%)
    ],
)
def test_decide(
    status: int, retry_after: str | None, attempt: int, action: Action, min_delay: float | None
) -> None:
    decision = decide(
        classify(status, retry_after, now=NOW), attempt, SCHEDULE, NOW, random.Random(0)
    )
    assert decision.action is action
    if min_delay is None:
        assert decision.due is None
    else:
        assert decision.due is not None and decision.due - NOW >= min_delay


@pytest.mark.parametrize(
    ("status", "unwell"),
    [
        (500, True),
        (502, True),
        (503, True),
        (599, True),
        (600, True),  # outside 2xx-5xx: a broken answer
        (408, True),
        (429, True),
        (None, True),  # timeout, refused or broken connection
        (400, False),
        (401, False),
        (403, False),
        (404, False),
        (409, False),
        (412, False),
        (422, False),
        (301, False),  # a redirect: not followed, and no sign the endpoint is unwell
        (200, False),
    ],
)
def test_only_signs_of_an_unwell_endpoint_count_for_the_breaker(
    status: int | None, unwell: bool
) -> None:
    assert classify(status, now=NOW).unwell is unwell
