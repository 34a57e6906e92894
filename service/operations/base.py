"""What every part of Operations stands on: its state (settings, stores, the lifecycle's
hooks), the bounds of a listing's page, `Shared` (a result computed at most once a second),
and what a process says of itself: /readyz's checks and /metrics' body, each computed once
for all the requests that ask meanwhile."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import aiohttp
import structlog
from redis.exceptions import RedisError

from service.accounts_view import SOURCES, STATES, AccountsView
from service.config import EndpointSettings, Settings
from service.contract.admin import Readiness
from service.endpoint_health import EndpointState
from service.errors import InvalidInput, NotFound
from service.metrics import Metrics
from service.store.redis_health import OUT_OF_MEMORY, write_problem
from service.store.stores import Stores

log = structlog.get_logger("service")

T = TypeVar("T")

# /readyz and /metrics read Redis at most this often, whatever the number of requests: a
# flood of probes costs the HTTP API's own Redis client one round trip a second, no more.
SHARED_FOR = 1.0
MAX_LIMIT = 500  # the most items one page of any listing holds


class Shared(Generic[T]):
    """`compute()`'s result, computed at most once per `seconds`: callers meanwhile get the
    last result, and concurrent callers share one computation (its result or its error)."""

    def __init__(self, compute: Callable[[], Awaitable[T]], seconds: float = SHARED_FOR) -> None:
        self.compute = compute
        self.seconds = seconds
        self._task: asyncio.Task[T] | None = None
        self._started = -math.inf

    async def get(self) -> T:
        now = time.monotonic()
        if self._task is None or (self._task.done() and now - self._started >= self.seconds):
            self._started = now
            self._task = asyncio.ensure_future(self.compute())
        # shielded: a request that goes away does not cancel what the others wait for
        return await asyncio.shield(self._task)


def page_limit(limit: int, most: int = MAX_LIMIT) -> int:
    # bool is an int to Python, not a count to anyone
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidInput(f"`limit` must be an integer from 1 to {most}")
    return limit


class OperationsBase:
    """Operations' state (the lifecycle sets its hooks: `wake`, `users_changed`, `checks`,
    `session`), and the process's readiness and metrics."""

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
        self.account_view = AccountsView(settings, stores, clock)
        # the deliveries' HTTP client (its resolver the SSRF guard's); None: no test sends
        self.session: aiohttp.ClientSession | None = None
        self.checks: dict[str, Callable[[], bool]] = {}
        self.redis_check = Shared(self._check_redis)
        self._episode: tuple[str, float] | None = None  # Redis' problem, and since when
        self._gauges = Shared(self._refresh_gauges)
        # scrapes at the same time share one render; a scrape after it gets a fresh one
        self._scrape = Shared(self._render, seconds=0.0)

    def _endpoint(self, endpoint_id: str) -> EndpointSettings:
        endpoint = self.settings.endpoint(endpoint_id)
        if endpoint is None:
            raise NotFound(f"unknown endpoint {endpoint_id!r}")
        return endpoint

    async def readiness(self) -> Readiness:
        """Each check: true, or why not. Redis must take a write (asked at most once a
        second); each worker must run."""
        problem = await self.redis_check.get()
        checks: dict[str, bool | str] = {
            "redis": problem or True,
            **{name: check() for name, check in self.checks.items()},
        }
        return Readiness(ready=all(value is True for value in checks.values()), checks=checks)

    async def _check_redis(self) -> str | None:
        """Redis' problem, if any; its start and its end are logged once each."""
        problem = await write_problem(self.stores.redis)
        self.metrics.redis_oom.set(1 if problem == OUT_OF_MEMORY else 0)
        episode = self._episode
        if problem == (episode[0] if episode else None):
            return problem
        now = time.monotonic()
        if problem is None:
            assert episode is not None
            log.info("redis_ready", was=episode[0], after_s=round(now - episode[1], 1))
            self._episode = None
        else:
            log.warning("redis_not_ready", reason=problem)
            self._episode = (problem, now)
        return problem

    async def scrape(self) -> bytes:
        """/metrics' body: the gauges refreshed and every metric rendered, once for all the
        scrapes that ask while it is done. Rendering them all takes milliseconds of the
        event loop, which the workers share: a flood of scrapes, each rendered, stalled
        their heartbeats for seconds, and their leases ran out."""
        return await self._scrape.get()

    async def _render(self) -> bytes:
        try:
            await self.refresh_gauges()
        except RedisError:
            pass  # the gauges keep their last values; /readyz says Redis is away
        return self.metrics.render()

    async def refresh_gauges(self) -> None:
        """The gauges read from Redis (the same on every replica), before a scrape; read at
        most once a second, however many scrapes ask."""
        await self._gauges.get()

    async def _refresh_gauges(self) -> None:
        metrics, polls, queue = self.metrics, self.stores.polls, self.stores.queue
        now_ms = self.clock() * 1000
        oldest_poll = await self.stores.leases.oldest_due_ms()
        late = (now_ms - oldest_poll) / 1000 if oldest_poll is not None else 0.0
        metrics.poll_lag.set(max(late, 0.0))
        metrics.accounts_blocked.set(len(await polls.backed_off_accounts()))
        metrics.accounts_fallen_back.set(len(await self.stores.users.fallbacks()))
        by_state = await self.account_view.counts()
        for state in STATES:
            for source in SOURCES:
                metrics.accounts.labels(state, source).set(by_state[state, source])
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
