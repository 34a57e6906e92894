"""The budget plan and the adaptive cadence, pure: tables."""

from __future__ import annotations

import pytest

from service.reading.plan import (
    HEADROOM,
    RATE_FLOOR,
    Demand,
    activity_weight,
    adaptive_interval,
    adaptive_scale,
    adaptive_share,
    change_rate,
    feed_weights,
    plan,
    user_weight,
)

HOUR_MS = 3_600_000
PLANNED = 1000 * HEADROOM  # of the tables' 1,000 a minute (970)


def demand(**changes: float) -> Demand:
    base = {
        "budget_per_minute": 1000,
        "feeds": 0,
        "users": 0,
        "listings": 0,
        "interval": 300.0,
        "account_interval": 10.0,
        "discovery_interval": 900.0,
        "full_resync_interval": 86400.0,
    }
    return Demand(**{**base, **changes})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "needed", "user_interval", "feed_interval", "fits"),
    [
        ({"users": 1000}, 200.0, 300.0, 10.0, True),  # 1,000 users at 5 m: 200 a minute
        ({"users": 4850}, 970.0, 300.0, 10.0, True),  # just at the 970 planned
        ({"users": 20_000}, 4000.0, 300.0 * 4000 / PLANNED, 10.0, False),  # stretched to 21 m
        ({"users": 1000, "user_pages": 2}, 400.0, 300.0, 10.0, True),  # pages count
        ({"feeds": 3, "users": 1000}, 218.0, 300.0, 10.0, True),  # 3 feeds: 18 a minute
        # feeds first: 100 feeds at 5 s take 1,200 of 970; users keep their 5 % share (48.5)
        (
            {"feeds": 100, "account_interval": 5.0, "users": 1000},
            1400.0,
            300 * 200 / (PLANNED * 0.05),
            None,
            False,
        ),
    ],
)
def test_plan_fits_the_budget_feeds_first(
    changes: dict[str, float],
    needed: float,
    user_interval: float,
    feed_interval: float | None,
    fits: bool,
) -> None:
    result = plan(demand(**changes))
    assert result.allowed_per_minute == 1000 * HEADROOM
    assert result.needed_per_minute == pytest.approx(needed)
    assert result.user_interval == pytest.approx(user_interval)
    if feed_interval is not None:
        assert result.feed_interval == pytest.approx(feed_interval)
    assert result.fits is fits
    spent = (
        result.feeds * 60 / result.feed_interval
        + result.users * changes.get("user_pages", 1) * 60 / result.user_interval
    )
    assert spent <= result.allowed_per_minute + 1e-6  # what the plan spends fits


def test_full_reads_are_spread_and_stretched_last() -> None:
    # 300 feeds' full reads of 1,000 pages each a day: 208 a minute; they get what is left
    result = plan(demand(feeds=1, users=4000, full_read_pages=300_000))
    assert result.user_interval == pytest.approx(300.0)  # 800 + 6 fit in 970
    left = PLANNED - 806
    assert result.full_resync_interval == pytest.approx(86400.0 * (300_000 / 1440) / left)


@pytest.mark.parametrize(
    ("previous", "since_h", "changes", "expected"),
    [
        (None, None, 0, 0.0),
        (None, None, 1, 1.0),  # at a 5 m interval, RATE_MEMORY intervals are an hour
        (1.0, 1.0, 0, 0.36788),  # an hour later it has faded to 1/e
        (1.0, 1.0, 2, 2.36788),
        (5.0, 0.0, 0, 5.0),
    ],
)
def test_change_rate_adds_changes_and_fades(
    previous: float | None, since_h: float | None, changes: int, expected: float
) -> None:
    now = 10 * HOUR_MS
    since = None if since_h is None else int(now - since_h * HOUR_MS)
    assert change_rate(previous, since, changes, now, 300.0) == pytest.approx(expected, 1e-4)


@pytest.mark.parametrize("interval", [30.0, 300.0, 3600.0])
def test_change_rate_is_the_same_at_any_interval(interval: float) -> None:
    # counted in intervals, so one change weighs as much against the floor at any interval
    # (and a bench run ten times faster behaves as at 5 minutes)
    memory_ms = int(12 * interval * 1000)
    now = 1000 * memory_ms
    assert change_rate(None, None, 1, now, interval) == pytest.approx(1.0)
    assert change_rate(1.0, now - memory_ms, 2, now, interval) == pytest.approx(2.36788, 1e-4)


@pytest.mark.parametrize(
    ("rate", "in_progress", "due_in_h", "expected"),
    [
        (0.0, False, None, (1 / 8) ** 0.5),  # idle: the floor
        (24.0, False, None, (24 + 1 / 8) ** 0.5),  # √rate: 4× the changes, 2× the polls
        (0.0, True, None, 1.5 * (1 / 8) ** 0.5),
        (0.0, False, 12, 2 * (1 / 8) ** 0.5),  # due within a day
        (0.0, False, 48, (1 / 8) ** 0.5),  # due later: no boost
        (0.0, False, -5, 2 * (1 / 8) ** 0.5),  # just past due: overdue is near
        (0.0, False, -48, (1 / 8) ** 0.5),  # long past due: no boost for ever
    ],
)
def test_user_weight(
    rate: float, in_progress: bool, due_in_h: float | None, expected: float
) -> None:
    now = 100 * HOUR_MS
    due = None if due_in_h is None else int(now + due_in_h * HOUR_MS)
    assert user_weight(rate, in_progress, due, now) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("weights", "busy_at_most", "idle_at_least"),
    [
        ([1.0] * 100, 300.001, 299.999),  # all alike: the uniform cadence
        ([9.0] * 10 + [1.0] * 90, 100.0, 300.0),  # busy users sooner, idle ones later
        # very busy: idle users at the bound pay for the busy ones as far as it goes
        ([100.0] * 10 + [1.0] * 90, 60.0, 600.0),
    ],
)
def test_adaptive_cadence_spends_what_uniform_would(
    weights: list[float], busy_at_most: float, idle_at_least: float
) -> None:
    interval, minimum, bound = 300.0, 30.0, 600.0
    scale = adaptive_scale(weights, interval, minimum, bound)
    intervals = [adaptive_interval(w, scale, minimum, bound) for w in weights]
    assert sum(1 / t for t in intervals) == pytest.approx(len(weights) / interval, rel=1e-3)
    assert min(intervals) >= minimum and max(intervals) <= bound
    assert intervals[0] <= busy_at_most and intervals[-1] >= idle_at_least


def test_adaptive_cadence_when_everyone_is_busy_or_idle() -> None:
    # nobody can go faster than min_interval nor slower than the bound
    assert adaptive_interval(1000.0, 1.0, 30.0, 600.0) == 30.0
    assert adaptive_interval(0.001, 1000.0, 30.0, 600.0) == 600.0
    assert adaptive_scale([], 300.0, 30.0, 600.0) == 300.0


def test_full_resync_interval_zero_plans_a_full_read_with_every_read() -> None:
    """`0` (every read a full one) divided by zero in every plan, check-config's and run's."""
    nothing_learned = plan(demand(feeds=1, users=10, full_resync_interval=0.0))
    assert nothing_learned.fits and nothing_learned.full_resync_interval == 0.0
    # a feed read every 10 s, each a full read of 5 pages: 30 a minute, within budget
    light = plan(demand(feeds=1, full_resync_interval=0.0, full_read_pages=5))
    assert light.needed_per_minute == pytest.approx(6 + 30)
    assert light.full_resync_interval == 0.0
    # 1,000 pages every 10 s is 6,000 a minute: spaced out from the feed's cadence
    heavy = plan(demand(feeds=1, full_resync_interval=0.0, full_read_pages=1000))
    left = PLANNED - 6
    assert not heavy.fits
    assert heavy.full_resync_interval == pytest.approx(10.0 * 6000 / left)
    # a listing alone: its full reads come every discovery_interval
    listing = plan(demand(listings=1, full_resync_interval=0.0, full_read_pages=200))
    assert listing.needed_per_minute == pytest.approx(60 / 900 + 200 * 60 / 900)


# -- accounts' feeds, adaptive: 10 s busy, 100 s the slowest --

IDLE = activity_weight(0.0)


@pytest.mark.parametrize(
    ("feeds", "busy", "quiet_at_least"),
    [
        (300, 30, 20.0),  # 1,800 a minute needed: 30 busy every 10 s, the quiet pay for it
        (300, 0, 18.5),  # nobody busy: the plan's uniform cadence (300 × 60 / 970 s)
        (120, 12, 10.0),  # 720 a minute fit: every feed every 10 s, busy or quiet
    ],
)
def test_busy_feeds_are_read_every_account_interval_within_the_plan(
    feeds: int, busy: int, quiet_at_least: float
) -> None:
    result = plan(demand(feeds=feeds))
    quiet = [IDLE] * (feeds - busy)
    share = adaptive_share(quiet, result.feed_interval, 10.0, 100.0, busy)
    assert share.interval(IDLE, busy=True) == 10.0  # a feed that just found changes
    assert quiet_at_least <= share.interval(IDLE) <= 100.0
    # what it spends: all the plan gives the feeds (planned, 97% of the key), never more
    spent = share.per_second(quiet, busy) * 60
    assert spent == pytest.approx(min(feeds * 6.0, PLANNED), rel=1e-3)


def test_quiet_feeds_slow_down_to_the_bound_before_busy_ones_do() -> None:
    # a share of 100 feeds every 80 s (1.25 a second): 97 quiet feeds at the 100 s bound
    # cost 0.97, and the 3 busy get the rest, every 10.7 s: only then do they slow down
    share = adaptive_share([IDLE] * 97, 80.0, 10.0, 100.0, 3)
    assert share.interval(IDLE) == 100.0
    assert share.interval(IDLE, busy=True) == pytest.approx(3 / (100 / 80 - 0.97))
    assert share.per_second([IDLE] * 97, 3) == pytest.approx(100 / 80)
    # with more to share, the busy are read every account_interval, the quiet faster too
    roomy = adaptive_share([IDLE] * 97, 60.0, 10.0, 100.0, 3)
    assert roomy.interval(IDLE, busy=True) == 10.0 and roomy.interval(IDLE) < 100.0
    assert roomy.per_second([IDLE] * 97, 3) == pytest.approx(100 / 60)


def test_the_bound_gives_way_when_the_budget_cannot_afford_it() -> None:
    # 3,000 feeds on 970 a minute: each every 185.6 s at best, past the 100 s bound
    result = plan(demand(feeds=3000))
    share = adaptive_share([IDLE] * 3000, result.feed_interval, 10.0, 100.0)
    assert share.slowest == pytest.approx(result.feed_interval)
    assert share.per_second([IDLE] * 3000) * 60 == pytest.approx(PLANNED, rel=1e-3)


def test_feed_weights_fade_and_busy_feeds_are_counted_apart() -> None:
    now = 10 * HOUR_MS
    memory_ms = int(12 * 10.0 * 1000)  # RATE_MEMORY intervals of 10 s
    activity = [
        (None, None, False),  # never read: idle
        (4.0, now - memory_ms, False),  # four changes, faded by 1/e
        (1.0, now, True),  # its last read found changes
    ]
    weights, busy = feed_weights(activity, now, 10.0)
    assert busy == 1
    assert weights == pytest.approx([RATE_FLOOR**0.5, (4 / 2.718281828 + RATE_FLOOR) ** 0.5])


def test_the_feeds_read_fastest_go_first_only_while_the_key_is_oversubscribed() -> None:
    # 300 feeds on 970 a minute (each every 18.6 s uniformly): the busy, every 10 s, go
    # first; a quiet feed does not
    tight = plan(demand(feeds=300))
    share = adaptive_share([IDLE] * 270, tight.feed_interval, 10.0, 100.0, 30)
    assert share.first(share.interval(IDLE, busy=True), tight.feed_interval)
    assert not share.first(share.interval(IDLE), tight.feed_interval)
    # 120 feeds fit at every 10 s: everyone at the fastest cadence, nobody ahead
    roomy = plan(demand(feeds=120))
    share = adaptive_share([IDLE] * 108, roomy.feed_interval, 10.0, 100.0, 12)
    assert not share.first(share.interval(IDLE, busy=True), roomy.feed_interval)
