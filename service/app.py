"""The lifecycle: every client and worker is built here, started in order, stopped in reverse."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import aiohttp
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.api import create_api
from service.config import Settings
from service.delivery.dispatcher import Dispatcher
from service.delivery.ssrf import GuardedResolver
from service.metrics import Metrics
from service.operations import SHARED_FOR, Operations
from service.reading.account_feed import FeedReader
from service.reading.account_listing import AccountListing, NotLmsCheck
from service.reading.overdue import OverdueWatcher
from service.reading.planner import PLAN_SECONDS, BudgetPlanner
from service.reading.read_result import ReadResult
from service.reading.runner import PollRunner, Reader
from service.reading.schedule import PollScheduler
from service.reading.user_listing import UserListing
from service.reading.user_poll import Poller
from service.store import keys
from service.store.connect import connect_http, connect_workers
from service.store.directory import AccountDirectory
from service.store.leases import Lease, Leases
from service.store.limits import api_key_rate
from service.store.redis_health import log_redis_error
from service.store.stores import Stores
from service.upstream.client import StackOneClient

log = structlog.get_logger("service")

ReadT = TypeVar("ReadT", bound=ReadResult)

Role = Literal["all", "poller", "dispatcher"]
STOP_TIMEOUT = 10.0  # in-flight work gets this long; the whole stop stays under 15 s
MAX_HEADER_BYTES = 16 * 1024  # one header field, or the request line


def _constant(members: set[str]) -> Callable[[], Awaitable[set[str]]]:
    """A schedule that holds the same members whatever happens."""

    async def members_() -> set[str]:
        return members

    return members_


def _feed_members(accounts: AccountDirectory) -> Callable[[], Awaitable[set[str]]]:
    """The accounts read through their change feed now (config and discovered)."""

    async def members() -> set[str]:
        return {keys.account_member(a) for a in (await accounts.current()).feed_accounts}

    return members


def _listing_members(accounts: AccountDirectory) -> Callable[[], Awaitable[set[str]]]:
    """The `users: all` accounts now, whose user listings are read."""

    async def members() -> set[str]:
        return {keys.account_member(a) for a in (await accounts.current()).listing_accounts}

    return members


class Service:
    """`background=False` is the burst mode of tests and tools: nothing runs by itself;
    `scheduler.run_once()` polls what is due and `dispatcher.drain()` delivers it."""

    def __init__(
        self,
        settings: Settings,
        *,
        role: Role = "all",
        redis: Redis | None = None,
        clock: Callable[[], float] = time.time,
        serve_http: bool = True,
        background: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.role = role
        self.clock = clock
        self.serve_http = serve_http
        self.background = background
        self.rng = rng or random.Random()
        self.stores = Stores.on(redis or connect_workers(settings), settings, clock)
        self.metrics = Metrics()
        # the HTTP API (and readiness, and the gauges) on a client of its own: however many
        # requests come, they never take a connection from the workers' pool
        http_redis = redis or connect_http(settings.redis_url, self.stores.redis)
        http_stores = Stores.on(http_redis, settings, clock)
        self.operations = Operations(settings, http_stores, self.metrics, clock=clock)
        # every process derives the same plan from Redis; the readers follow it
        self.planner = BudgetPlanner(
            self.stores.read_costs, self.stores.users, settings, self.metrics, clock=clock
        )
        self._planning: asyncio.Task[None] | None = None
        self._replan: asyncio.Task[None] | None = None
        self._replan_again = False
        # the stores tests and tools reach for most
        self.redis = self.stores.redis
        self.queue = self.stores.queue
        self.endpoint_store = self.stores.endpoints
        self.poll_store = self.stores.polls
        self.scheduler: PollScheduler | None = None  # users polled one by one
        self.feeds: PollScheduler | None = None  # accounts' change feeds
        self.listings: PollScheduler | None = None  # accounts' user listings (`users: all`)
        self.linked: PollScheduler | None = None  # the key's linked accounts (discovery)
        self.dispatcher: Dispatcher | None = None
        self.http_url: str | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self._runner: web.AppRunner | None = None
        self._watch: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # the deliveries' own connection pool (never waiting behind upstream requests), its
        # resolver the SSRF guard's; test sends from the admin API use it too, in any role
        delivery_session = self._session(
            limit=200, resolver=GuardedResolver(self.settings.delivery.allow_private_addresses)
        )
        self.operations.session = delivery_session
        if self.role in ("all", "dispatcher"):
            self.dispatcher = self._dispatcher(delivery_session)
            self.operations.wake = self.dispatcher.wake
            if self.background:
                self.dispatcher.start()
            self.operations.checks["dispatcher"] = lambda: self._running(self.dispatcher)
        if self.role in ("all", "poller"):
            self._schedulers()
            self.operations.users_changed = self._users_changed
            if self.background:
                await self.refresh_plan()
                self._planning = asyncio.create_task(self._plan_periodically())
            for scheduler in self.schedulers():
                if self.background:
                    scheduler.start()
            self.operations.checks["poller"] = lambda: all(
                self._running(scheduler) for scheduler in self.schedulers()
            )
        if self.background:
            self._watch = asyncio.create_task(self._watch_redis(), name="watch-redis")
        if self.serve_http:
            # aiohttp answers a header or request line over 8 KiB with a plain-text 400
            # before any middleware; twice that lets real requests (large cookies, tokens)
            # reach the API's JSON answers, and still bounds what one request can buffer
            self._runner = web.AppRunner(
                create_api(self.operations),
                access_log=None,
                max_line_size=MAX_HEADER_BYTES,
                max_field_size=MAX_HEADER_BYTES,
            )
            await self._runner.setup()
            http = self.settings.http
            site = web.TCPSite(self._runner, http.host, http.port)
            await site.start()
            host, port = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
            self.http_url = f"http://{host}:{port}"
        log.info(
            "service_started",
            role=self.role,
            http=self.http_url,
            endpoints=len(self.settings.endpoints),
        )

    async def _watch_redis(self) -> None:
        """Readiness checked every second, whether or not anything asks: an episode of Redis
        trouble (out of memory, say) is logged and in the metrics when it starts, not at the
        next probe. /readyz shares these checks."""
        while True:
            try:
                await self.operations.readiness()
            except Exception:  # a bug here must not end the watch
                log.exception("readiness_check_crashed")
            await asyncio.sleep(SHARED_FOR)

    def _running(self, worker: Dispatcher | PollScheduler | None) -> bool:
        """A worker runs; in burst mode, it is there to be driven."""
        return worker is not None and (worker.running or not self.background)

    def _dispatcher(self, session: aiohttp.ClientSession) -> Dispatcher:
        stores = self.stores
        return Dispatcher(
            stores.queue,
            stores.endpoints,
            stores.limiter,
            session,
            self.settings,
            self.metrics,
            clock=self.clock,
            rng=self.rng,
        )

    async def refresh_plan(self) -> None:
        """Derive the budget plan again now; while Redis fails, the readers follow the last."""
        try:
            await self.planner.refresh()
        except RedisError as e:  # the readers follow the last plan (at first: the config's)
            log_redis_error(log, "budget_plan_failed", e)

    def _users_changed(self) -> None:
        """Tracked users came or went, or an account's strategy changed: the per-user
        schedule and the budget plan follow now, not at their next periodic run."""
        if self.scheduler is not None:
            self.scheduler.resync()
        if not self.background:
            return
        self._replan_again = True  # a plan under way may have read the users before this
        if self._replan is None or self._replan.done():
            self._replan = asyncio.create_task(self._replan_while_changed())

    async def _replan_while_changed(self) -> None:
        while self._replan_again:
            self._replan_again = False
            await self.refresh_plan()

    async def _plan_periodically(self) -> None:
        while True:
            await asyncio.sleep(PLAN_SECONDS)
            await self.refresh_plan()

    def _accounts_changed(self) -> None:
        """Discovery found accounts linked, changed or unlinked (or one no LMS account):
        this process's schedules follow now (the others' within a second of their next
        tick, when their directory sees the version move)."""
        self.stores.accounts.forget_cache()
        self.operations.stores.accounts.forget_cache()
        for scheduler in (self.listings, self.feeds):
            if scheduler is not None:
                scheduler.resync()
        self._users_changed()

    def schedulers(self) -> list[PollScheduler]:
        """Those this process runs, in the order a burst runs them: linked accounts (which
        accounts are read), listings (who is tracked), feeds, then users polled one by
        one."""
        ordered = (self.linked, self.listings, self.feeds, self.scheduler)
        return [s for s in ordered if s is not None]

    def _schedulers(self) -> None:
        """The user poll schedule, and those of account feeds and user listings where the
        config has accounts that use them; one client and budget for all."""
        stores, settings, metrics, clock = self.stores, self.settings, self.metrics, self.clock
        polling = settings.polling
        wake = self.dispatcher.wake if self.dispatcher else None
        budget = api_key_rate(settings.stackone.max_requests_per_minute)
        rate = stores.limiter.rate(budget)
        session = self._session(limit=100)
        # on the service's clock: an account's provider pause ends when its due time does
        client = StackOneClient(
            session, settings.stackone, rate, metrics, clock=clock, yields=self.planner.yields
        )
        cadence = self.planner
        poller = Poller(
            stores.polls,
            client,
            budget,
            settings,
            metrics,
            on_committed=wake,
            cadence=cadence,
            accounts=stores.accounts,
            clock=clock,
        )
        overdue = OverdueWatcher(stores.polls, settings, metrics, on_committed=wake, clock=clock)
        runner = PollRunner(
            poller,
            stores.leases,
            stores.polls,
            metrics,
            interval=polling.interval,
            on_read=self.planner.observer("user"),
            clock=clock,
        )
        users = PollScheduler(
            stores.leases,
            stores.polls,
            stores.users.per_user_members,
            runner,
            settings,
            stores.accounts,
            interval=polling.interval,
            overdue=overdue,
            clock=clock,
        )
        self.scheduler = users
        discovery = settings.account_discovery.enabled  # accounts may come at any time
        if discovery:
            self.linked = self._account_listing(client)
        if discovery or any(a.uses_feed for a in settings.accounts):
            feed = FeedReader(
                stores.feeds,
                stores.users,
                client,
                settings,
                metrics,
                on_committed=wake,
                on_fallback=self._users_changed,
                cadence=cadence,
                clock=clock,
            )
            self.feeds = self._account_schedule(
                self._not_lms(feed.poll) if discovery else feed,
                stores.feed_leases,
                _feed_members(stores.accounts),
                polling.account_interval,
                "feed",
            )
        if discovery or any(a.all_users for a in settings.accounts):
            listing = UserListing(
                stores.feeds,
                stores.users,
                client,
                settings,
                metrics,
                on_changed=self._users_changed,
                cadence=cadence,
                clock=clock,
            )
            self.listings = self._account_schedule(
                self._not_lms(listing.poll) if discovery else listing,
                stores.discovery_leases,
                _listing_members(stores.accounts),
                polling.discovery_interval,
                "listing",
            )

    def _account_listing(self, client: StackOneClient) -> PollScheduler:
        """The key's linked accounts, listed every `account_discovery.interval` (what it
        costs is not planned: a few pages an interval)."""
        listing = AccountListing(
            self.stores.linked,
            client,
            self.settings,
            self.metrics,
            on_changed=self._accounts_changed,
            clock=self.clock,
        )
        return self._account_schedule(
            listing,
            self.stores.account_listing_leases,
            _constant({keys.ACCOUNT_LISTING}),
            self.settings.account_discovery.interval,
            "accounts",
            planned=False,
            per_account=False,  # its member is the key's listing, no account
        )

    def _not_lms(self, poll: Callable[[Lease], Awaitable[ReadT]]) -> NotLmsCheck[ReadT]:
        """A discovered account whose first read says it is no LMS account is skipped."""
        stores = self.stores
        return NotLmsCheck(
            poll,
            stores.linked,
            stores.feeds,
            self.settings,
            on_changed=self._accounts_changed,
            clock=self.clock,
        )

    def _account_schedule(
        self,
        reader: Reader,
        leases: Leases,
        members: Callable[[], Awaitable[set[str]]],
        interval: float,
        kind: str,
        *,
        planned: bool = True,
        per_account: bool = True,
    ) -> PollScheduler:
        """A schedule of accounts (their feeds, or their user listings), each due at once
        when first scheduled, read by `reader` every `interval`; `planned`: what each read
        costs is reported to the budget plan; `per_account`: a failed read backs its
        account off or pauses it (not the key's linked-account listing's)."""
        stores = self.stores
        runner = PollRunner(
            reader,
            leases,
            stores.polls,
            self.metrics,
            interval=interval,
            on_read=self.planner.observer(kind) if planned else None,
            span_name=f"{kind} read",
            per_account=per_account,
            clock=self.clock,
        )
        return PollScheduler(
            leases,
            stores.polls,
            members,
            runner,
            self.settings,
            stores.accounts,
            interval=interval,
            spread=False,
            # the feeds read fastest are claimed first while the key is oversubscribed
            first=self.planner.first_feeds if kind == "feed" else None,
            clock=self.clock,
        )

    def _session(
        self, limit: int, resolver: aiohttp.abc.AbstractResolver | None = None
    ) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=limit, resolver=resolver)
        # no cookies: a receiver's or the API's Set-Cookie must not follow later requests
        session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        self._sessions.append(session)
        return session

    async def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop taking work, let in-flight work finish up to `timeout`, hand back the rest."""
        for task in (self._planning, self._replan, self._watch):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        stops = [scheduler.stop(timeout) for scheduler in self.schedulers()]
        if self.dispatcher:
            stops.append(self.dispatcher.stop(timeout))
        await asyncio.gather(*stops, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        for session in self._sessions:
            await session.close()
        if self.operations.stores.redis is not self.redis:
            await self.operations.stores.redis.aclose()
        await self.redis.aclose()
        log.info("service_stopped")
