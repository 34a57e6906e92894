"""The limit on guessing the admin token, as a pure object on a clock the test holds."""

from __future__ import annotations

from service.api.sign_in_limit import SignInLimiter


def test_a_client_past_its_failures_waits_out_the_window_others_do_not() -> None:
    limiter = SignInLimiter(per_client=3, overall=100, window=60)
    for t in (1000.0, 1001.0, 1002.0):
        assert limiter.retry_after("10.0.0.1", t) is None
        limiter.failed("10.0.0.1", t)
    assert limiter.retry_after("10.0.0.1", 1002.0) == 58  # the window opened at 1000
    assert limiter.retry_after("10.0.0.1", 1059.5) == 1  # rounded up, never 0
    assert limiter.retry_after("10.0.0.2", 1030.0) is None  # another client
    assert limiter.retry_after("10.0.0.1", 1060.0) is None  # the window is over
    limiter.failed("10.0.0.1", 1060.0)
    assert limiter.retry_after("10.0.0.1", 1060.0) is None  # a new window, one failure


def test_the_right_token_clears_the_clients_failures() -> None:
    limiter = SignInLimiter(per_client=2, overall=100, window=60)
    limiter.failed("a", 0.0)
    limiter.succeeded("a")
    limiter.failed("a", 1.0)
    assert limiter.retry_after("a", 1.0) is None


def test_the_overall_cap_holds_every_client_back() -> None:
    limiter = SignInLimiter(per_client=5, overall=4, window=60)
    for i in range(4):
        limiter.failed(f"10.0.0.{i}", 10.0 + i)
    assert limiter.retry_after("10.9.9.9", 20.0) == 50  # never failed, still held
    assert limiter.retry_after("10.9.9.9", 70.0) is None


def test_the_clients_tracked_are_bounded() -> None:
    limiter = SignInLimiter(per_client=2, overall=10**9, window=60, max_clients=100)
    for i in range(1000):
        limiter.failed(f"c{i}", float(i))  # one a second: windows end as new ones come
    assert limiter.tracked() <= 100
    for i in range(1000):  # all in one window: the oldest give way
        limiter.failed(f"d{i}", 5000.0)
    assert limiter.tracked() <= 100
    limiter.failed("d999", 5000.0)
    assert limiter.retry_after("d999", 5000.0) == 60  # the newest are still held


def test_one_summary_a_window_counts_the_failures_and_refusals() -> None:
    limiter = SignInLimiter(per_client=2, overall=100, window=60)
    assert limiter.take_summary(0.0) is None
    for t in range(5):
        if limiter.retry_after("a", float(t)) is None:
            limiter.failed("a", float(t))
    limiter.failed("b", 10.0)
    assert limiter.take_summary(59.0) is None  # the window is still open
    summary = limiter.take_summary(60.0)
    assert summary is not None
    assert (summary.failures, summary.refused, summary.clients) == (3, 3, 2)
    assert summary.top_clients == [("a", 2), ("b", 1)]
    assert limiter.take_summary(61.0) is None  # said once
