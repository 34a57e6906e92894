"""The request budget, pure: what the configured cadences need, what the API key allows, the
effective cadences that fit, and the adaptive cadence of one user. `now` is passed in.

Every request counts against `max_requests_per_minute`: feeds, per-user polls, listings,
full reads. HEADROOM of it is planned; the rest is left for retries and probes. Classes are
served in order (feeds, per-user polls, listings, full reads), each first given a small
share so none starves, then what it needs while budget is left; a class given less than it
needs has its cadence stretched in proportion.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from service.changes.detect import overdue_due_ms, status_value
from service.config import PollingSettings

# of the key's budget planned: the operator sized the budget already, and the shared limiter
# (a GCRA on Redis' clock) holds the rest, so retries and probes beyond the plan wait their
# turn instead of causing a 429
HEADROOM = 0.97
MIN_SHARE = 0.05  # of the planned budget, held for each class present before the order
DAY_MS = 86_400_000

# adaptive cadence
IDLE_BOUND = 2.0  # no user polled less often than this × the plan's per-user interval
# a user's change rate counts changes per RATE_MEMORY intervals (an hour at the 5-minute
# default): so the rule is the same at any interval, and a bench run at a faster one transfers
# The rate every user is assumed to have, a change every 8 hours at 5 minutes: an idle user
# weighs a third of one with a recent change (√(1/8) against √(1 + 1/8)), not a fifth as
# with 1/24, so idle users are polled about every 1.4 intervals instead of 1.7, and the
# changes of users without recent ones (10% in the bench's adaptive scenario) no longer set
# a p95 worse than uniform polling's; the mean is as good (measured there)
RATE_FLOOR = 1.0 / 8
RATE_MEMORY = 12.0  # a change weighs on a user's cadence for about this many intervals
IN_PROGRESS_BOOST = 1.5  # an assignment in progress: the learner is at it
DUE_SOON_BOOST = 2.0  # a due date within a day: the completion (or the overdue) is near


@dataclass(frozen=True, slots=True)
class Demand:
    """What the tracked users, accounts and their strategies ask of the key."""

    budget_per_minute: float  # max_requests_per_minute
    feeds: int  # accounts read through their change feed now
    users: int  # users polled one by one
    listings: int  # `users: all` accounts
    interval: float  # seconds, as configured
    account_interval: float
    discovery_interval: float
    full_resync_interval: float
    user_pages: float = 1.0  # pages a user's poll reads, as learned
    feed_pages: float = 1.0  # pages an incremental feed read reads, as learned
    full_read_pages: float = 0.0  # pages of every feed's and listing's full read together


@dataclass(frozen=True, slots=True)
class Plan:
    allowed_per_minute: float
    needed_per_minute: float
    feed_interval: float  # effective cadences, seconds
    user_interval: float
    listing_interval: float
    full_resync_interval: float
    feeds: int
    users: int
    listings: int

    @property
    def fits(self) -> bool:
        return self.needed_per_minute <= self.allowed_per_minute + 1e-9


def _per_minute(count: float, pages: float, interval: float) -> float:
    return count * max(pages, 1.0) * 60.0 / interval


def _full_reads_every(d: Demand) -> float:
    """How often the full reads come, in seconds: every `full_resync_interval`; at 0 (every
    read a full one) with each read of the feeds and listings that make them, so as often as
    the more frequent of those cadences (both are at least MIN_POLL_INTERVAL: never 0)."""
    if d.full_resync_interval > 0:
        return d.full_resync_interval
    present = [(d.feeds, d.account_interval), (d.listings, d.discovery_interval)]
    return min((interval for count, interval in present if count), default=d.account_interval)


def plan(demand: Demand) -> Plan:
    """The effective cadences that fit the budget (the configured ones when they do)."""
    d = demand
    allowed = d.budget_per_minute * HEADROOM
    full_every = _full_reads_every(d)
    needs = [
        _per_minute(d.feeds, d.feed_pages, d.account_interval),
        _per_minute(d.users, d.user_pages, d.interval),
        _per_minute(d.listings, 1.0, d.discovery_interval),
        d.full_read_pages * 60.0 / full_every,
    ]
    granted = [min(need, MIN_SHARE * allowed) for need in needs]
    left = allowed - sum(granted)
    for n, need in enumerate(needs):  # in order: feeds, users, listings, full reads
        more = min(need - granted[n], max(left, 0.0))
        granted[n] += more
        left -= more

    def stretched(interval: float, n: int) -> float:
        return interval if granted[n] >= needs[n] else interval * needs[n] / granted[n]

    return Plan(
        allowed_per_minute=allowed,
        needed_per_minute=sum(needs),
        feed_interval=stretched(d.account_interval, 0),
        user_interval=stretched(d.interval, 1),
        listing_interval=stretched(d.discovery_interval, 2),
        # at 0 and within budget: still every read; stretched, from the reads' cadence
        full_resync_interval=(
            d.full_resync_interval if granted[3] >= needs[3] else stretched(full_every, 3)
        ),
        feeds=d.feeds,
        users=d.users,
        listings=d.listings,
    )


def feed_bounds(plan: Plan, polling: PollingSettings) -> tuple[float, float]:
    """`adaptive`: the fastest and slowest an account's feed is read: `account_interval`, and
    `max_account_interval` unless the budget cannot afford every feed even at that."""
    return polling.account_interval, max(polling.slowest_account_interval, plan.feed_interval)


def next_due(due_at: float, claimed_at: float, interval: float, now: float) -> float:
    """An interval after the poll was due, not after it was claimed or ended: claims lag by up
    to a tick and polls take time, and either would stretch every interval. A poll claimed an
    interval or more late (a backlog, or `poll now`, which makes a user due at 0) starts the
    cadence again from its claim instead of being due again at once."""
    on_cadence = due_at + interval
    return on_cadence if on_cadence > now else max(claimed_at + interval, now)


# -- adaptive cadence --


def change_rate(
    previous: float | None, since_ms: int | None, changes: int, now_ms: int, interval: float
) -> float:
    """A user's changes, decayed: each change adds one and the sum fades over RATE_MEMORY
    intervals, so a burst of activity keeps a user close for a while. In changes per
    RATE_MEMORY intervals, not per hour, so one change weighs as much against RATE_FLOOR at
    any interval (counted per hour, it weighed ten times more at 30 s than at 5 minutes)."""
    rate = previous or 0.0
    if since_ms is not None and now_ms > since_ms:
        rate *= math.exp(-(now_ms - since_ms) / 1000.0 / (RATE_MEMORY * interval))
    return rate + changes


def activity_weight(rate: float) -> float:
    """How much a read is worth by the changes it finds: √(change rate), the allocation that
    minimises the mean time to detect a change for a given number of reads (a user's poll,
    an account's feed read)."""
    return math.sqrt(rate + RATE_FLOOR)


def user_weight(rate: float, in_progress: bool, next_due_ms: int | None, now_ms: int) -> float:
    """How much a user's poll is worth: its activity weight, with boosts for an assignment
    in progress and a due date within a day."""
    weight = activity_weight(rate)
    if in_progress:
        weight *= IN_PROGRESS_BOOST
    if next_due_ms is not None and -DAY_MS <= next_due_ms - now_ms <= DAY_MS:
        weight *= DUE_SOON_BOOST
    return weight


def adaptive_interval(weight: float, scale: float, min_interval: float, bound: float) -> float:
    """A user's interval: `scale` / weight, never under `min_interval`, never over `bound`."""
    return min(max(scale / weight, min_interval), max(bound, min_interval))


def adaptive_scale(
    weights: list[float], interval: float, min_interval: float, bound: float
) -> float:
    """The scale at which the members' adaptive intervals cost what reading every one of
    them each `interval` would: the same number of reads a second, spent where changes are."""
    if not weights:
        return interval
    return _scale_for(weights, len(weights) / interval, min_interval, max(bound, min_interval))


def _scale_for(weights: list[float], target: float, min_interval: float, bound: float) -> float:
    """The scale at which `weights` cost `target` reads a second.

    At a given scale the members split in three: the heaviest read every `min_interval`,
    the lightest every `bound`, the rest every scale/weight (w/scale reads a second). With
    the weights sorted and summed once, each trial scale costs two bisections, not a pass
    over every member (20,000 users, 60 trials)."""
    ordered = sorted(weights)
    sums = list(itertools.accumulate(ordered, initial=0.0))
    count = len(ordered)

    def polls(scale: float) -> float:
        slow = bisect.bisect_right(ordered, scale / bound)  # scale/w >= bound: at the bound
        fast = bisect.bisect_left(ordered, scale / min_interval)  # from here: min_interval
        middle = sums[fast] - sums[slow]
        return slow / bound + middle / scale + (count - fast) / min_interval

    low, high = min_interval * ordered[0], bound * ordered[-1]
    if polls(high) >= target:  # even the slowest cadence costs as much: every one at bound
        return high
    if polls(low) <= target:  # every one at min_interval fits
        return low
    for _ in range(60):  # bisection on a log scale: polls(scale) falls as scale grows
        middle_scale = math.sqrt(low * high)
        if polls(middle_scale) > target:
            low = middle_scale
        else:
            high = middle_scale
    return high


@dataclass(frozen=True, slots=True)
class Adaptive:
    """One kind's adaptive cadence (users' polls, or accounts' feed reads): a member is read
    every `scale`/weight, never more often than `fastest` nor less often than `slowest`; a
    member `busy` (an account whose last read found changes) every `busy_interval`."""

    scale: float
    fastest: float
    slowest: float
    busy_interval: float

    def interval(self, weight: float, busy: bool = False) -> float:
        if busy:
            return self.busy_interval
        return adaptive_interval(weight, self.scale, self.fastest, self.slowest)

    def first(self, interval: float, plan_interval: float) -> bool:
        """Whether a member paced at `interval` is read first: at the fastest cadence while
        the plan stretches the others' (the key is oversubscribed). Its reads are claimed
        and served by the key's limiter before the others' backlog: the key runs close to
        full then, and the others wait a few seconds more in turn instead of it."""
        return interval <= self.fastest + 1e-9 and self.fastest < plan_interval

    def per_second(self, weights: Iterable[float], busy: int = 0) -> float:
        """What these members cost, in reads a second."""
        return busy / self.busy_interval + sum(1 / self.interval(w) for w in weights)


def adaptive_share(
    weights: list[float], interval: float, fastest: float, slowest: float, busy: int = 0
) -> Adaptive:
    """The adaptive cadence that spends the kind's share of the plan (every member read each
    `interval`) where the changes are: `busy` members every `fastest` first, the others by
    weight. `slowest` gives way to `interval` when even that is more than the share affords,
    and busy members to `slowest` when the others at `slowest` leave them too little: the
    share is never overspent."""
    slowest = max(slowest, fastest, interval)
    target = (len(weights) + busy) / interval  # reads a second
    busy_interval = fastest
    if busy:
        # at least busy/interval a second: slowest >= interval
        room = target - len(weights) / slowest
        busy_interval = min(slowest, max(fastest, busy / room))
    scale = interval
    if weights:
        scale = _scale_for(weights, target - busy / busy_interval, fastest, slowest)
    return Adaptive(scale, fastest, slowest, busy_interval)


def feed_weights(
    activity: Iterable[tuple[float | None, int | None, bool]], now_ms: int, interval: float
) -> tuple[list[float], int]:
    """The weights of the feeds whose last read found nothing, faded to `now_ms`, and how
    many are busy (their last read found changes). `activity`: each feed's change rate,
    last read (ms) and whether that read found changes, as its state holds them."""
    weights, busy = [], 0
    for rate, last_ms, found in activity:
        if found:
            busy += 1
        else:
            weights.append(activity_weight(change_rate(rate, last_ms, 0, now_ms, interval)))
    return weights, busy


class Cadence(Protocol):
    """The effective cadences a reader follows (the budget planner's, or the config's)."""

    @property
    def feed_interval(self) -> float: ...

    @property
    def listing_interval(self) -> float: ...

    @property
    def full_resync_interval(self) -> float: ...

    @property
    def per_user_interval(self) -> float:
        """Every per-user poll's interval without `adaptive`: what a user's recent changes
        are counted in (RATE_MEMORY of them)."""
        ...

    def user_interval(self, weight: float | None) -> float:
        """A user's interval: the plan's, or with `adaptive` its own by its weight."""
        ...

    def account_feed_interval(self, weight: float | None, busy: bool) -> float:
        """An account's feed interval: the plan's, or with `adaptive` its own by its weight
        (`busy`: its last read found changes)."""
        ...

    def feed_paced(self, account_id: str, interval: float) -> None:
        """The account's next feed read comes `interval` on (whether its reads go first)."""
        ...


@dataclass(frozen=True, slots=True)
class ConfiguredCadence:
    """The cadences as configured, for tools and tests that run readers without a plan."""

    feed_interval: float
    listing_interval: float
    full_resync_interval: float
    interval: float

    @classmethod
    def of(cls, polling: PollingSettings) -> ConfiguredCadence:
        return cls(
            polling.account_interval,
            polling.discovery_interval,
            polling.full_resync_interval,
            polling.interval,
        )

    @property
    def per_user_interval(self) -> float:
        return self.interval

    def user_interval(self, weight: float | None) -> float:
        return self.interval

    def account_feed_interval(self, weight: float | None, busy: bool) -> float:
        return self.feed_interval

    def feed_paced(self, account_id: str, interval: float) -> None:
        return None


def assignment_activity(
    records: Iterable[dict[str, Any] | None],
) -> tuple[bool, int | None]:
    """(an assignment is in progress, the nearest due date of an open assignment in ms)."""
    in_progress = False
    nearest: int | None = None
    for record in records:
        in_progress = in_progress or status_value(record) == "in_progress"
        due = overdue_due_ms(record)
        if due is not None and (nearest is None or due < nearest):
            nearest = due
    return in_progress, nearest
