"""What an operator can do and see, in one place: the admin API and the CLI call these.

Built by the lifecycle (`app.Service`) or by a command from the stores; it knows nothing of
the running workers beyond the hooks the lifecycle sets: `wake` (events to deliver now),
`users_changed` (the schedules and the budget plan follow at once) and `checks` (whether
each worker runs, for /readyz).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any, cast

import structlog
from redis.exceptions import RedisError

from service.budget_planner import BudgetPlanner
from service.config import Settings
from service.delivery.breaker import enabled
from service.endpoint_health import EndpointHealth, EndpointState
from service.metrics import Metrics
from service.store import keys
from service.store.read_state import ReadState
from service.store.stores import Stores

log = structlog.get_logger("service")


def _read_state(state: ReadState, due_ms: int | None) -> dict[str, Any]:
    """A feed's or listing's state as the admin API shows it."""
    return {
        "watermark_ms": state.watermark_ms,
        "last_read_ms": state.last_poll_ms,
        "last_full_read_ms": state.last_full_sync_ms,
        "next_read_at_ms": due_ms,
        "failures": state.failures or 0,
        "last_error": state.last_error,
    }


class Operations:
    def __init__(
        self,
        settings: Settings,
        stores: Stores,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.stores = stores
        self.metrics = metrics
        self.clock = clock
        self.wake: Callable[[set[str]], None] = lambda endpoint_ids: None
        self.users_changed: Callable[[], None] = lambda: None
        self.checks: dict[str, Callable[[], bool]] = {}

    async def replay(self, endpoint_id: str, event_ids: list[str] | None) -> int:
        """Queue dead letters again with their ids (all of the endpoint's when none given)."""
        now_ms = int(self.clock() * 1000)
        queued = await self.stores.queue.replay(endpoint_id, now_ms, event_ids)
        log.info("dead_letters_replayed", endpoint=endpoint_id, queued=queued)
        self.wake({endpoint_id})
        return queued

    async def enable_endpoint(self, endpoint_id: str) -> EndpointHealth:
        health = await self.stores.endpoints.update(endpoint_id, enabled)
        log.info("endpoint_enabled", endpoint=endpoint_id)
        self.wake({endpoint_id})
        return health

    async def add_user(self, account_id: str, user_id: str) -> bool:
        added = await self.stores.users.add(account_id, user_id, due_ms=int(self.clock() * 1000))
        log.info("user_added", account_id=account_id, user_id=user_id, added=added)
        if added:
            self.users_changed()
        return added

    async def remove_user(self, account_id: str, user_id: str) -> bool:
        removed = await self.stores.users.remove(account_id, user_id)
        log.info("user_removed", account_id=account_id, user_id=user_id, removed=removed)
        if removed:
            self.users_changed()
        return removed

    async def poll_now(self, account_id: str, user_id: str) -> bool:
        """Read the user's assignments now: its own poll, or its account's feed when the feed
        covers it. False when the user is not tracked."""
        users = self.stores.users
        if await users.polled_by_feed(account_id, user_id):
            return await self.stores.feed_leases.due_now(keys.account_member(account_id))
        return await self.stores.leases.due_now(keys.user_member(account_id, user_id))

    async def accounts(self) -> list[dict[str, Any]]:
        """Each configured account: its strategy in force (and why, for `auto`), its feed
        and listing state, the users tracked, and its back-off."""
        stores = self.stores
        fallbacks = await stores.feeds.fallbacks()
        backoffs = await stores.polls.backed_off_accounts()
        tracked = Counter(keys.parse_user_member(m)[0] for m in await stores.users.members())
        out = []
        for account in self.settings.accounts:
            account_id = account.account_id
            fallback = fallbacks.get(account_id)
            in_force = "account" if account.uses_feed and fallback is None else "per_user"
            feed = listing = None
            if account.uses_feed:
                feed = _read_state(
                    await stores.feeds.feed_state(account_id),
                    await stores.feed_leases.due_ms(keys.account_member(account_id)),
                )
            if account.all_users:
                listing = _read_state(
                    await stores.feeds.listing_state(account_id),
                    await stores.discovery_leases.due_ms(keys.account_member(account_id)),
                )
            backoff = backoffs.get(account_id)
            out.append(
                {
                    "account_id": account_id,
                    "strategy": account.strategy,
                    "strategy_in_force": in_force,
                    "fallback": None if fallback is None else asdict(fallback),
                    "users": "all" if account.all_users else "listed",
                    "users_tracked": tracked.get(account_id, 0),
                    "feed": feed,
                    "listing": listing,
                    "backoff": None if backoff is None else asdict(backoff),
                }
            )
        return out

    async def budget(self) -> dict[str, Any]:
        """The budget plan the pollers follow (as last published; the config's before)."""
        published = await self.stores.budget.published()
        if published is not None:
            return cast(dict[str, Any], json.loads(published))
        return BudgetPlanner(
            self.stores.budget, self.stores.users, self.settings, self.metrics
        ).describe()

    async def upstream(self) -> dict[str, Any]:
        """What the upstream API has told us to slow down: 429 answers this process has
        had (its own counter, as in /metrics), and the key's shared Retry-After pause."""
        responses_429 = self.metrics.registry.get_sample_value(
            "lms_webhooks_upstream_requests_total", {"status": "429"}
        )
        paused = await self.stores.limiter.pause_left(keys.UPSTREAM_PAUSE)
        return {"responses_429": int(responses_429 or 0), "paused_for_seconds": paused}

    async def readiness(self) -> dict[str, bool]:
        try:
            redis_ok = bool(await asyncio.wait_for(self.stores.redis.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        return {"redis": redis_ok, **{name: check() for name, check in self.checks.items()}}

    async def refresh_gauges(self) -> None:
        """The gauges read from Redis (the same on every replica), before a scrape."""
        metrics, polls, queue = self.metrics, self.stores.polls, self.stores.queue
        now_ms = self.clock() * 1000
        oldest_poll = await self.stores.leases.oldest_due_ms()
        late = (now_ms - oldest_poll) / 1000 if oldest_poll is not None else 0.0
        metrics.poll_lag.set(max(late, 0.0))
        metrics.accounts_blocked.set(len(await polls.backed_off_accounts()))
        for endpoint in self.settings.endpoints:
            oldest = await queue.next_due_ms(endpoint.id)
            waiting = (now_ms - oldest) / 1000 if oldest is not None else 0.0
            metrics.queue_age.labels(endpoint.id).set(max(waiting, 0.0))
            metrics.queue_depth.labels(endpoint.id).set(await queue.depth(endpoint.id))
            metrics.dead_letters.labels(endpoint.id).set(await queue.dead_count(endpoint.id))
            health = await self.stores.endpoints.health(endpoint.id)
            for state in EndpointState:
                metrics.endpoint_state.labels(endpoint.id, state.value).set(
                    1 if health.status is state else 0
                )
            metrics.endpoint_failures.labels(endpoint.id).set(health.consecutive_failures)
