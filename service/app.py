"""The lifecycle: every client and worker is built here, started in order, stopped in reverse."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Literal

import aiohttp
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.api import create_api
from service.config import Settings
from service.delivery.breaker import ACTIVE, DISABLED, PAUSED
from service.delivery.dispatcher import Dispatcher
from service.delivery.ssrf import GuardedResolver
from service.metrics import Metrics
from service.overdue import OverdueWatcher
from service.poller import Poller
from service.schedule import LEASE_SECONDS, PollScheduler
from service.store.connect import connect
from service.store.endpoints import EndpointStore
from service.store.limits import SharedLimiter
from service.store.polls import PollStore
from service.store.queue import EventQueue
from service.store.users import TrackedUsers
from service.upstream.client import StackOneClient

log = structlog.get_logger("service")

Role = Literal["all", "poller", "dispatcher"]
STOP_TIMEOUT = 10.0  # in-flight work gets this long; the whole stop stays under 15 s


class Service:
    def __init__(
        self,
        settings: Settings,
        *,
        role: Role = "all",
        redis: Redis | None = None,
        clock: Callable[[], float] = time.time,
        serve_http: bool = True,
    ) -> None:
        self.settings = settings
        self.role = role
        self.clock = clock
        self.serve_http = serve_http
        self.redis = redis if redis is not None else connect(settings.redis_url)
        self.metrics = Metrics()
        self.queue = EventQueue(self.redis)
        self.endpoint_store = EndpointStore(self.redis)
        self.poll_store = PollStore(self.redis)
        self.limiter = SharedLimiter(self.redis)
        self.users = TrackedUsers(self.redis, settings)
        self.scheduler: PollScheduler | None = None
        self.dispatcher: Dispatcher | None = None
        self.http_url: str | None = None
        self._sessions: list[aiohttp.ClientSession] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.role in ("all", "dispatcher"):
            # its own connection pool: deliveries never wait behind upstream requests
            delivery_session = self._session(
                limit=200,
                resolver=GuardedResolver(self.settings.delivery.allow_private_addresses),
            )
            self.dispatcher = Dispatcher(
                self.queue,
                self.endpoint_store,
                self.limiter,
                delivery_session,
                self.settings,
                self.metrics,
                clock=self.clock,
                rng=random.Random(),
            )
            self.dispatcher.start()
        if self.role in ("all", "poller"):
            client = StackOneClient(
                self._session(limit=100), self.settings.stackone, self.limiter, self.metrics
            )
            poller = Poller(
                self.poll_store,
                client,
                self.settings,
                self.metrics,
                lease_seconds=LEASE_SECONDS,
                on_committed=self.dispatcher.wake if self.dispatcher else None,
                clock=self.clock,
            )
            overdue = OverdueWatcher(
                self.poll_store,
                self.settings,
                self.metrics,
                on_committed=self.dispatcher.wake if self.dispatcher else None,
                clock=self.clock,
            )
            self.scheduler = PollScheduler(
                self.poll_store,
                self.users,
                poller,
                self.settings,
                self.metrics,
                overdue=overdue,
                clock=self.clock,
            )
            self.scheduler.start()
        if self.serve_http:
            self._runner = web.AppRunner(create_api(self), access_log=None)
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
        stops = []
        if self.scheduler:
            stops.append(self.scheduler.stop(timeout))
        if self.dispatcher:
            stops.append(self.dispatcher.stop(timeout))
        await asyncio.gather(*stops, return_exceptions=True)
        if self._runner:
            await self._runner.cleanup()
        for session in self._sessions:
            await session.close()
        await self.redis.aclose()
        log.info("service_stopped")

    # -- what the admin API and the CLI do, in one place --

    async def replay(self, endpoint_id: str, event_ids: list[str] | None) -> int:
        """Queue dead letters again with their ids (all of the endpoint's when none given)."""
        queued = await self.queue.replay(endpoint_id, int(self.clock() * 1000), event_ids)
        log.info("dead_letters_replayed", endpoint=endpoint_id, queued=queued)
        if self.dispatcher:
            self.dispatcher.wake({endpoint_id})
        return queued

    async def add_user(self, account_id: str, user_id: str) -> bool:
        added = await self.users.add(account_id, user_id, due_ms=int(self.clock() * 1000))
        log.info("user_added", account_id=account_id, user_id=user_id, added=added)
        return added

    async def remove_user(self, account_id: str, user_id: str) -> bool:
        removed = await self.users.remove(account_id, user_id)
        log.info("user_removed", account_id=account_id, user_id=user_id, removed=removed)
        return removed

    async def readiness(self) -> dict[str, bool]:
        try:
            redis_ok = bool(await asyncio.wait_for(self.redis.ping(), 2.0))
        except (RedisError, OSError, TimeoutError):
            redis_ok = False
        checks = {"redis": redis_ok}
        if self.scheduler:
            checks["poller"] = self.scheduler.running
        if self.dispatcher:
            checks["dispatcher"] = self.dispatcher.running
        return checks

    async def refresh_gauges(self) -> None:
        now_ms = self.clock() * 1000
        oldest_poll = await self.poll_store.oldest_due_ms()
        late = (now_ms - oldest_poll) / 1000 if oldest_poll is not None else 0.0
        self.metrics.poll_lag.set(max(late, 0.0))
        self.metrics.accounts_blocked.set(len(await self.poll_store.blocked_accounts()))
        for endpoint in self.settings.endpoints:
            oldest = await self.queue.next_due_ms(endpoint.id)
            waiting = (now_ms - oldest) / 1000 if oldest is not None else 0.0
            self.metrics.queue_age.labels(endpoint.id).set(max(waiting, 0.0))
            self.metrics.queue_depth.labels(endpoint.id).set(await self.queue.depth(endpoint.id))
            self.metrics.dead_letters.labels(endpoint.id).set(
                await self.queue.dead_count(endpoint.id)
            )
            health = await self.endpoint_store.health(endpoint.id)
            for state in (ACTIVE, PAUSED, DISABLED):
                self.metrics.endpoint_state.labels(endpoint.id, state).set(
                    1 if health.status == state else 0
                )
            self.metrics.endpoint_failures.labels(endpoint.id).set(health.consecutive_failures)
