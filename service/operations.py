"""What an operator can do and see, in one place: the admin API, the console and the CLI
call these.

Built by the lifecycle (`app.Service`) or by a command from the stores; it knows nothing of
the running workers beyond the hooks the lifecycle sets: `wake` (events to deliver now),
`users_changed` (the schedules and the budget plan follow at once), `checks` (whether
each worker runs, for /readyz) and `session` (the deliveries' HTTP client, for test sends).

Listings take a `limit` (1..MAX_LIMIT) and an opaque `cursor` from the page before, and
answer `next_cursor` (None: the end). Bad input raises InvalidInput (the API's 400), an
unknown endpoint NotFound (404).
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Generic, TypeVar, cast, get_args

import aiohttp
import structlog
from redis.exceptions import RedisError

from service import jsonfmt
from service.accounts_view import SOURCES, STATES, AccountsView
from service.changes.events import TEST, TestEvent
from service.changes.outbox import EventHead
from service.config import EndpointSettings, Settings
from service.contract.admin import RedeliverOutcome
from service.cursor import decode_cursor, encode_cursor
from service.delivery.breaker import enabled
from service.delivery.policy import Verdict
from service.delivery.sender import Poster
from service.endpoint_health import EndpointHealth, EndpointState
from service.errors import InvalidInput, NotFound
from service.metrics import Metrics
from service.reading.planner import BudgetPlanner
from service.store import keys
from service.store.limits import endpoint_budget
from service.store.log import OUTCOMES, RECENT_ATTEMPTS, LogFilter, attempt_record
from service.store.redis_health import OUT_OF_MEMORY, write_problem
from service.store.stores import Stores
from service.timefmt import from_epoch, iso_ms
from service.user_ids import user_id_problem

log = structlog.get_logger("service")

T = TypeVar("T")

# /readyz and /metrics read Redis at most this often, whatever the number of requests: a
# flood of probes costs the HTTP API's own Redis client one round trip a second, no more.
SHARED_FOR = 1.0


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


MAX_LIMIT = 500  # the most items one page of any listing holds
REDELIVER_OUTCOMES: tuple[str, ...] = get_args(RedeliverOutcome)
# the exact filters of `events` (the API's and the console's query parameters)
EVENT_FILTERS = (
    "endpoint",
    "type",
    "account_id",
    "user_id",
    "assignment_id",
    "completion_id",
    "outcome",
)
TEST_MESSAGE = (
    "A test event sent from lms-webhooks' admin API to this endpoint alone. It is not an "
    "assignment change and is never retried."
)


def _limit(limit: int, most: int = MAX_LIMIT) -> int:
    # bool is an int to Python, not a count to anyone
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= most:
        raise InvalidInput(f"`limit` must be an integer from 1 to {most}")
    return limit


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
        self.redis_check = Shared(self._check_redis)
        self._episode: tuple[str, float] | None = None  # Redis' problem, and since when
        self._gauges = Shared(self._refresh_gauges)
        # scrapes at the same time share one render; a scrape after it gets a fresh one
        self._scrape = Shared(self._render, seconds=0.0)
        self.account_view = AccountsView(settings, stores, clock)

        # the deliveries' HTTP client (its resolver the SSRF guard's); None: no test sends
        self.session: aiohttp.ClientSession | None = None

    def _endpoint(self, endpoint_id: str) -> EndpointSettings:
        endpoint = self.settings.endpoint(endpoint_id)
        if endpoint is None:
            raise NotFound(f"unknown endpoint {endpoint_id!r}")
        return endpoint

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
        """Track a user of a configured account from now on; False when it already is.
        InvalidInput for an id that cannot be one (service/user_ids.py), NotFound for an
        account the config does not name (it was polled with that account id header)."""
        problem = user_id_problem(user_id)
        if problem is not None:
            raise InvalidInput(f"`user_id`: {problem}")
        if await self.stores.accounts.account(account_id) is None:
            raise NotFound("unknown account: `account_id` is not an account being read")
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

    async def endpoints(self, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """Each configured endpoint (in the config's order) with its state, queue depth and
        dead letters: `{"endpoints": [...], "next_cursor"}`."""
        _limit(limit)
        configured = self.settings.endpoints
        start = 0
        if cursor is not None:
            (after,) = decode_cursor(cursor, "endpoints", (str,))
            ids = [e.id for e in configured]
            if after not in ids:
                raise InvalidInput("`cursor` names an endpoint no longer configured")
            start = ids.index(after) + 1
        page = configured[start : start + limit]
        stores = self.stores
        out = []
        for endpoint in page:
            health = await stores.endpoints.health(endpoint.id)
            out.append(
                {
                    "id": endpoint.id,
                    "url": endpoint.url,
                    **asdict(health),
                    "queue_depth": await stores.queue.depth(endpoint.id),
                    "dead_letters": await stores.queue.dead_count(endpoint.id),
                }
            )
        more = start + limit < len(configured)
        next_cursor = encode_cursor("endpoints", page[-1].id) if more and page else None
        return {"endpoints": out, "next_cursor": next_cursor}

    async def users(self, limit: int = 100, cursor: str | None = None) -> dict[str, Any]:
        """Tracked users (by account, then user id) with their poll state, and the accounts
        backed off: `{"users": [...], "backed_off_accounts": {...}, "next_cursor"}`."""
        _limit(limit)
        after = None if cursor is None else decode_cursor(cursor, "users", (str,))[0]
        users, last = await self.stores.users.describe(after, limit)
        backed_off = await self.stores.polls.backed_off_accounts()
        return {
            "users": users,
            # accounts whose key/account was refused (401/403/412), with when they are retried
            "backed_off_accounts": {a: asdict(b) for a, b in backed_off.items()},
            "next_cursor": None if last is None else encode_cursor("users", last),
        }

    async def events(
        self,
        *,
        endpoint: str | None = None,
        type: str | None = None,
        account_id: str | None = None,
        user_id: str | None = None,
        assignment_id: str | None = None,
        completion_id: str | None = None,
        outcome: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Logged events, newest first, each with its outcome and attempts per endpoint:
        `{"items": [summary...], "next_cursor"}`. A page may hold fewer than `limit` items
        (even none) with a cursor to go on: one call looks at a bounded part of the log."""
        _limit(limit)
        if endpoint is not None:
            self._endpoint(endpoint)
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidInput(f"`outcome` must be one of {', '.join(OUTCOMES)}")
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise InvalidInput("`since` is after `until`")
        filters = LogFilter(
            endpoint=endpoint,
            type=type,
            account_id=account_id,
            user_id=user_id,
            assignment_id=assignment_id,
            completion_id=completion_id,
            outcome=outcome,
            since_ms=since_ms,
            until_ms=until_ms,
        )
        items, next_cursor = await self.stores.log.events(filters, limit, cursor)
        return {"items": items, "next_cursor": next_cursor}

    async def event(self, event_id: str) -> dict[str, Any] | None:
        """One logged event: its summary, `body` (as sent, parsed) and `attempts` per
        endpoint (oldest first); None when it is not logged (or no longer)."""
        return await self.stores.log.event(event_id)

    async def endpoint_attempts(self, endpoint_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The endpoint's most recent attempts, newest first, each with its event's id and
        type (the last RECENT_ATTEMPTS are kept)."""
        self._endpoint(endpoint_id)
        return await self.stores.log.endpoint_attempts(endpoint_id, _limit(limit, RECENT_ATTEMPTS))

    async def test_send(self, endpoint_id: str) -> dict[str, Any]:
        """Send a signed `webhook.test` event to this endpoint alone, now, through the same
        signing, POST and SSRF guard as every delivery; never queued, never retried (whatever
        the endpoint's state), and recorded in the delivery log as delivered or dead."""
        endpoint = self._endpoint(endpoint_id)
        if self.session is None:
            raise InvalidInput("test sends need the running service (its HTTP client)")
        budget = endpoint_budget(endpoint.id, endpoint.max_per_second)
        if budget is not None:  # the endpoint's max_per_second holds for test sends too
            rate = self.stores.limiter.rate(budget)
            while True:  # a permit (Redis' clock: no event to wait for here)
                wait = await rate.try_acquire()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        now = self.clock()
        event_id = "evt_" + secrets.token_hex(16)
        event: TestEvent = {
            "id": event_id,
            "type": TEST,
            "timestamp": iso_ms(from_epoch(now)),
            "data": {"test": True, "endpoint_id": endpoint_id, "message": TEST_MESSAGE},
        }
        body = jsonfmt.dumps_bytes(event)
        poster = Poster(
            endpoint,
            self.session,
            self.clock,
            allow_private=self.settings.delivery.allow_private_addresses,
            deadlines=None,
        )
        attempt = await poster.post(event_id, body)
        result = attempt.result
        delivered = result.verdict is Verdict.SUCCESS
        duration_ms = round(attempt.duration * 1000, 1)
        record = attempt_record(
            attempt=1,
            started_at_ms=int(attempt.started_at * 1000),
            duration_ms=duration_ms,
            status=result.status,
            error=result.error,
            response=attempt.response,
            next_attempt_at_ms=None,
        )
        head = EventHead(TEST, event["timestamp"], None, None, None)
        await self.stores.log.record_sent(
            endpoint_id,
            event_id,
            head,
            body,
            at_ms=int(now * 1000),
            delivered=delivered,
            record=record,
        )
        log.info(
            "test_sent",
            endpoint=endpoint_id,
            event_id=event_id,
            delivered=delivered,
            status=result.status,
            error=result.error,
        )
        return {
            "event_id": event_id,
            "delivered": delivered,
            "status": result.status,
            "error": result.error,
            "duration_ms": duration_ms,
        }

    async def redeliver(
        self, endpoint_id: str, *, since_ms: int, until_ms: int | None, outcome: str
    ) -> int:
        """Queue the endpoint's logged events of [since, until] (until None: now) again,
        with their ids and bodies as sent, atomically: those delivered, dead-lettered, or
        either (`any`); not those still queued, not test sends. Returns how many."""
        self._endpoint(endpoint_id)
        if outcome not in REDELIVER_OUTCOMES:
            raise InvalidInput(f"`outcome` must be one of {', '.join(REDELIVER_OUTCOMES)}")
        now_ms = int(self.clock() * 1000)
        until = now_ms if until_ms is None else until_ms
        if since_ms > until:
            raise InvalidInput("`since` is after `until`")
        queued = await self.stores.log.redeliver(
            endpoint_id,
            since_ms=since_ms,
            until_ms=until,
            outcome=outcome,
            now_ms=now_ms,
            never=TEST,
        )
        log.info(
            "events_redelivered",
            endpoint=endpoint_id,
            since_ms=since_ms,
            until_ms=until,
            outcome=outcome,
            queued=queued,
        )
        self.wake({endpoint_id})
        return queued

    async def accounts(self) -> list[dict[str, Any]]:
        """Every account (service/accounts_view.py: the accounts read, and the linked
        accounts not read), by id, each with its state, strategy in force (and why, for
        `auto`), feed and listing state, users tracked, back-off and provider's pause."""
        return (await self.account_view.page())[0]

    async def accounts_page(
        self, state: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> dict[str, Any]:
        """A page of the accounts (only those in `state`, when given):
        `{"accounts": [...], "next_cursor"}`."""
        _limit(limit)
        items, next_cursor = await self.account_view.page(state, limit, cursor)
        return {"accounts": items, "next_cursor": next_cursor}

    async def budget(self) -> dict[str, Any]:
        """The budget plan the pollers follow (as last published; the config's before)."""
        published = await self.stores.read_costs.published()
        if published is not None:
            return cast(dict[str, Any], json.loads(published))
        return BudgetPlanner(
            self.stores.read_costs, self.stores.users, self.settings, self.metrics
        ).describe()

    async def upstream(self) -> dict[str, Any]:
        """What the upstream API has told us to slow down: 429 answers this process has
        had (its own counter, as in /metrics), and the key's shared Retry-After pause."""
        responses_429 = self.metrics.registry.get_sample_value(
            "lms_webhooks_upstream_requests_total", {"status": "429"}
        )
        paused = await self.stores.limiter.pause_left(keys.UPSTREAM_PAUSE)
        return {"responses_429": int(responses_429 or 0), "paused_for_seconds": paused}

    async def readiness(self) -> dict[str, bool | str]:
        """Each check: true, or why not. Redis must take a write (asked at most once a
        second); each worker must run."""
        problem = await self.redis_check.get()
        return {
            "redis": problem or True,
            **{name: check() for name, check in self.checks.items()},
        }

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
