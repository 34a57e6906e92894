"""The budget plan of the running service: computed from what Redis holds (the users polled
one by one, the feeds in force, what reads cost as learned by every process), so every
process derives the same plan; published in Redis for the admin API, logged once per change,
exported as metrics. The readers follow it through the `Cadence` it is.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict

import structlog

from service.config import AccountSettings, Settings
from service.contract import admin as m
from service.metrics import Metrics
from service.reading.plan import (
    IDLE_BOUND,
    RATE_FLOOR,
    Adaptive,
    Demand,
    Plan,
    activity_weight,
    adaptive_share,
    change_rate,
    feed_bounds,
    feed_weights,
    plan,
)
from service.reading.read_result import ReadResult
from service.resources import COMPLETIONS
from service.store import keys
from service.store.leases import Lease
from service.store.read_costs import ReadCosts
from service.store.read_state import ReadState
from service.store.users import TrackedUsers

log = structlog.get_logger("budget")

PLAN_SECONDS = 30.0  # the plan is derived again this often (and when tracked users change)
_IDLE_WEIGHT = RATE_FLOOR**0.5  # a user or feed never read yet weighs as an idle one


def demand_of_config(settings: Settings) -> Demand:
    """What the config asks for, before anything is learned: its listed users (a `users:
    all` account's are not known until listed), its feeds, one page a read of each tracked
    resource (a feed account tracking completions reads two feeds, a user poll of one reads
    two routes)."""
    polling, accounts = settings.polling, settings.accounts
    feeds = [a for a in accounts if a.uses_feed]
    users = [(a, len(a.listed_users)) for a in accounts if not a.uses_feed]
    user_count = sum(n for _, n in users)
    return Demand(
        budget_per_minute=settings.stackone.max_requests_per_minute,
        feeds=len(feeds),
        users=user_count,
        listings=sum(a.all_users for a in accounts),
        interval=polling.interval,
        account_interval=polling.account_interval,
        discovery_interval=polling.discovery_interval,
        full_resync_interval=polling.full_resync_interval,
        user_pages=sum(len(a.resources) * n for a, n in users) / user_count if user_count else 1.0,
        feed_pages=sum(len(a.resources) for a in feeds) / len(feeds) if feeds else 1.0,
    )


def completions_cost(accounts: Iterable[AccountSettings], plan: Plan) -> m.CompletionsCost:
    """What tracking completions adds to the plan (one more feed read per account each
    feed interval, one more request per user poll): the accounts read that track them
    (the config's and discovered ones), and the requests a minute they add at the plan's
    cadences (one page a read)."""
    tracking = [a for a in accounts if COMPLETIONS in a.resources]
    feeds = sum(a.uses_feed for a in tracking)
    users = sum(len(a.listed_users) for a in tracking if not a.uses_feed)
    per_minute = feeds * 60.0 / plan.feed_interval + users * 60.0 / plan.user_interval
    return m.CompletionsCost(
        accounts=len(tracking), users_polled=users, per_minute=round(per_minute, 1)
    )


class BudgetPlanner:
    """Also the Cadence the readers follow: the plan's effective intervals."""

    def __init__(
        self,
        store: ReadCosts,
        users: TrackedUsers,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.users = users
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.plan = plan(demand_of_config(settings))
        # adaptive: by kind (`user`, `feed`), each member's interval by its weight
        self.adaptive = self._adaptive([], [], 0)
        self._seen: dict[str, list[int]] = {}  # kind → [pages, reads] not yet in Redis
        self._full: dict[tuple[str, str], int] = {}  # (kind, account) → its full read's pages
        self._feed_users = 0  # users the feeds cover
        self._accounts: list[AccountSettings] = list(settings.accounts)  # those read
        # the feeds read first (at the fastest cadence while the key is oversubscribed): from
        # every feed's state at each plan, and from each read this process paces meanwhile
        self._first: set[str] = set()

    # -- the Cadence --

    @property
    def feed_interval(self) -> float:
        return self.plan.feed_interval

    @property
    def listing_interval(self) -> float:
        return self.plan.listing_interval

    @property
    def full_resync_interval(self) -> float:
        return self.plan.full_resync_interval

    @property
    def per_user_interval(self) -> float:
        return self.plan.user_interval

    def user_interval(self, weight: float | None) -> float:
        if not self.settings.polling.adaptive:
            return self.plan.user_interval
        return self.adaptive["user"].interval(weight or _IDLE_WEIGHT)

    def account_feed_interval(self, weight: float | None, busy: bool) -> float:
        if not self.settings.polling.adaptive:
            return self.plan.feed_interval
        return self.adaptive["feed"].interval(weight or _IDLE_WEIGHT, busy)

    def feed_paced(self, account_id: str, interval: float) -> None:
        if self.settings.polling.adaptive and self.adaptive["feed"].first(
            interval, self.plan.feed_interval
        ):
            self._first.add(account_id)
        else:
            self._first.discard(account_id)

    # -- the accounts read first --

    def first_feeds(self) -> list[str]:
        """The feed schedule's members claimed before the others when due."""
        return [keys.account_member(a) for a in sorted(self._first)]

    def yields(self, account_id: str) -> bool:
        """Whether the account's requests leave the key's burst to those read first."""
        return bool(self._first) and account_id not in self._first

    @property
    def idle_bound(self) -> float:
        """No user is polled less often than this, however idle."""
        return IDLE_BOUND * self.plan.user_interval

    # -- learning and planning --

    def observer(self, kind: str) -> Callable[[Lease, ReadResult], None]:
        """What the runner of `kind` (`user`, `feed`, `listing`) reports each read to:
        pages per read, and each account's full read apart (it is spread over a day)."""

        def seen(lease: Lease, result: ReadResult) -> None:
            if not result.pages:  # not read (waiting): costs nothing
                return
            if result.full and kind != "user":
                self._full[(kind, lease.account_id)] = result.pages
                return
            pages_reads = self._seen.setdefault(kind, [0, 0])
            pages_reads[0] += result.pages
            pages_reads[1] += 1

        return seen

    async def refresh(self) -> Plan:
        """Derive the plan from what Redis holds now; publish it, and say so when it
        changed."""
        # taken first: reads reported while these are written (another refresh may run,
        # asked for by a change of the accounts) go to the next refresh, not lost
        seen, full = self._seen, self._full
        self._seen, self._full = {}, {}
        for kind, (pages, reads) in seen.items():
            await self.store.learn(kind, pages, reads)
        for (kind, account_id), pages in full.items():
            await self.store.learn_full_read(kind, account_id, pages)
        learned = await self.store.learned()
        accounts = await self.users.accounts.current()
        self._accounts = list(accounts.settings.values())
        per_user = await self.users.per_user_members()
        self._feed_users = len(await self.users.members()) - len(per_user)
        feeds = sorted(await self.users.feed_accounts_in_force())
        polling = self.settings.polling
        config = demand_of_config(self.settings)
        demand = Demand(
            budget_per_minute=config.budget_per_minute,
            feeds=len(feeds),
            users=len(per_user),
            listings=len(accounts.listing_accounts),
            interval=polling.interval,
            account_interval=polling.account_interval,
            discovery_interval=polling.discovery_interval,
            full_resync_interval=polling.full_resync_interval,
            user_pages=learned.get("user", config.user_pages),
            feed_pages=learned.get("feed", config.feed_pages),
            full_read_pages=learned["full"],
        )
        self.plan = plan(demand)
        if polling.adaptive:
            weights = [w or _IDLE_WEIGHT for w in await self.store.weights(sorted(per_user))]
            states = await self.store.feed_states(feeds)
            activity = ((s.change_rate, s.last_poll_ms, bool(s.busy)) for s in states)
            now_ms = int(self.clock() * 1000)
            self.adaptive = self._adaptive(
                weights, *feed_weights(activity, now_ms, self.plan.feed_interval)
            )
            self._first = self._reads_first(feeds, states, now_ms)
        self._export()
        described = self.describe().model_dump(mode="json")
        if await self.store.publish(json.dumps(described, sort_keys=True)):
            say = log.info if self.plan.fits else log.warning
            say("budget_plan", **described)
        return self.plan

    def _reads_first(self, feeds: list[str], states: list[ReadState], now_ms: int) -> set[str]:
        """The feeds whose next read comes at the fastest cadence, as their states say."""
        feed, interval = self.adaptive["feed"], self.plan.feed_interval
        first = set()
        for account_id, s in zip(feeds, states, strict=True):
            rate = change_rate(s.change_rate, s.last_poll_ms, 0, now_ms, interval)
            if feed.first(feed.interval(activity_weight(rate), bool(s.busy)), interval):
                first.add(account_id)
        return first

    def _adaptive(
        self, user_weights: list[float], feed_weights: list[float], busy_feeds: int
    ) -> dict[str, Adaptive]:
        """The adaptive cadences within the plan: each kind spends its share where the
        changes are (an account whose last read found changes first)."""
        p, polling = self.plan, self.settings.polling
        return {
            "user": adaptive_share(
                user_weights, p.user_interval, polling.min_interval, self.idle_bound
            ),
            "feed": adaptive_share(
                feed_weights, p.feed_interval, *feed_bounds(p, polling), busy_feeds
            ),
        }

    def describe(self) -> m.Budget:
        """The plan as the admin API shows it."""
        p = self.plan
        polling = self.settings.polling
        fastest_feed, slowest_feed = feed_bounds(p, polling)
        return m.Budget(
            allowed_per_minute=round(p.allowed_per_minute, 1),
            needed_per_minute=round(p.needed_per_minute, 1),
            budget_per_minute=self.settings.stackone.max_requests_per_minute,
            fits=p.fits,
            effective_interval_seconds=m.Intervals(
                per_user=round(p.user_interval, 3),
                account=round(p.feed_interval, 3),
                listing=round(p.listing_interval, 3),
                full_resync=round(p.full_resync_interval, 3),
            ),
            configured_interval_seconds=m.Intervals(
                per_user=polling.interval,
                account=polling.account_interval,
                listing=polling.discovery_interval,
                full_resync=polling.full_resync_interval,
            ),
            users=m.UsersByStrategy(per_user=p.users, account=self._feed_users),
            accounts=m.AccountsByStrategy(account=p.feeds, listing=p.listings),
            # what tracking completions adds (counted in needed_per_minute already)
            completions=completions_cost(self._accounts, p),
            # not the scale: it moves with every poll's weight, the plan does not
            adaptive=(
                m.AdaptiveBounds(
                    min_interval_seconds=polling.min_interval,
                    max_interval_seconds=round(self.idle_bound, 3),
                    accounts=m.IntervalBounds(
                        min_interval_seconds=fastest_feed,
                        max_interval_seconds=round(slowest_feed, 3),
                    ),
                )
                if polling.adaptive
                else None
            ),
        )

    def _export(self) -> None:
        p, metrics = self.plan, self.metrics
        metrics.budget_needed.set(p.needed_per_minute)
        metrics.budget_allowed.set(p.allowed_per_minute)
        for strategy, seconds in asdict(p).items():
            if strategy.endswith("_interval"):
                name = {"user_interval": "per_user", "feed_interval": "account"}.get(
                    strategy, strategy.removesuffix("_interval")
                )
                metrics.effective_interval.labels(name).set(seconds)
