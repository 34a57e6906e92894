"""Counting what one poll costs, exactly: Redis round trips and upstream HTTP requests.

Run in-process with the service's own Poller and a Redis connection that counts each write to
the socket (a pipeline or a script call is one), so the figure is exact, not sampled.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
from redis.asyncio import Connection, ConnectionPool, Redis

from service.config import Settings
from service.metrics import Metrics
from service.reading.user_poll import Poller
from service.store import keys
from service.store.leases import user_leases
from service.store.limits import SharedLimiter, api_key_rate
from service.store.polls import PollStore
from service.upstream.client import StackOneClient


class CountingConnection(Connection):
    """A Redis connection that counts round trips (every packed send waits for its replies)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def counting_redis(url: str) -> Redis:
    pool = ConnectionPool.from_url(url, decode_responses=True, connection_class=CountingConnection)
    return Redis(connection_pool=pool)


async def measure_poll(
    store: PollStore, poller: Poller, account_id: str, user_id: str
) -> tuple[int, Any]:
    """Claim the user as the scheduler would, poll once; (round trips of the poll, result)."""
    member = keys.user_member(account_id, user_id)
    leases = user_leases(store.redis)
    await leases.add({member: 0})
    await leases.due_now(member)
    [lease] = await leases.claim(1)
    assert lease.member == member
    before = CountingConnection.sent
    result = await poller.poll(lease)
    return CountingConnection.sent - before, result


async def poll_cost(
    redis_url: str,
    settings: Settings,
    account_id: str,
    user_id: str,
    before_second: Callable[[], object] | None = None,
) -> list[tuple[int, Any]]:
    """Two polls of one user with a new client (the first also connects and loads scripts);
    `before_second` may change something upstream between them."""
    redis = counting_redis(redis_url)
    metrics = Metrics()
    store = PollStore(redis)
    budget = api_key_rate(settings.stackone.max_requests_per_minute)
    try:
        async with aiohttp.ClientSession() as session:
            client = StackOneClient(
                session, settings.stackone, SharedLimiter(redis).rate(budget), metrics
            )
            poller = Poller(store, client, budget, settings, metrics)
            first = await measure_poll(store, poller, account_id, user_id)
            if before_second is not None:
                before_second()
            return [first, await measure_poll(store, poller, account_id, user_id)]
    finally:
        await redis.aclose()


async def idle_poll_cost(bench: Any, config: dict[str, Any]) -> tuple[int, int]:
    """(HTTP requests, Redis round trips) of one idle poll: a user's second, nothing changed."""
    settings = Settings.model_validate(config)
    user_id = settings.accounts[0].listed_users[0]
    await poll_cost(bench.redis_server.url, settings, "acc_1", user_id)  # connect, load scripts
    await bench.redis.delete(keys.user_state("acc_1", user_id), keys.snapshots("acc_1", user_id))
    baseline_at = len(bench.lms.requests)
    (_, _), (trips, result) = await poll_cost(bench.redis_server.url, settings, "acc_1", user_id)
    idle_requests = len(bench.lms.requests) - baseline_at - 1  # the first request: the baseline
    await bench.redis.flushall()
    if result.changes:
        raise AssertionError(f"the idle poll found changes: {result}")
    return idle_requests, trips
