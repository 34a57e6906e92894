"""Creating the Redis clients: a real server (directly, or its primary found through Redis
Sentinel), or the in-process store for the demo."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from service.config import Settings
from service.redis_url import SentinelTarget, is_sentinel, parse_sentinel_url

MEMORY_URL = "memory://"

# The HTTP API's own client: a few connections, and a request that finds them all busy
# waits for one (up to HTTP_CONNECTION_WAIT) instead of failing at once as redis-py's
# default pool does. Its pool is not the workers': a flood of requests can slow the API down,
# never take a connection a poll or a delivery needs.
HTTP_CONNECTIONS = 8
HTTP_CONNECTION_WAIT = 5.0
WORKER_CONNECTIONS = 100  # at least (redis-py's default pool size)
WORKER_CONNECTION_WAIT = 10.0  # as long as a command may take (socket_timeout)

_SOCKETS: dict[str, Any] = {"socket_connect_timeout": 5, "socket_timeout": 10}
_OPTIONS: dict[str, Any] = {
    **_SOCKETS,
    "decode_responses": True,
    "health_check_interval": 30,
    "retry_on_timeout": False,
}


def connect(url: str, *, max_connections: int | None = None, wait: float | None = None) -> Redis:
    """`memory://` is an in-process Redis (fakeredis with Lua): nothing is durable.

    `max_connections`: the pool's size (redis-py's default, 100, when None); `wait`: a caller
    that finds every connection busy waits up to that long for one, instead of failing."""
    if url.startswith(MEMORY_URL):
        import fakeredis  # imported here: only the demo and dev setups need it

        fake: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        return fake
    if is_sentinel(url):
        return _sentinel_primary(parse_sentinel_url(url), max_connections, wait)
    pool: ConnectionPool
    if wait is None:
        pool = ConnectionPool.from_url(url, max_connections=max_connections, **_OPTIONS)
    else:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections or HTTP_CONNECTIONS, timeout=wait, **_OPTIONS
        )
    return Redis.from_pool(pool)


def worker_connections(settings: Settings) -> int:
    """The workers' pool: a connection for each poll and each endpoint's senders, claimer,
    settler, acks and claims' heartbeat at once, and some for the planner, the overdue
    check and the rest; never fewer than redis-py's default."""
    delivery = sum(2 * endpoint.concurrency + 4 for endpoint in settings.endpoints)
    return max(WORKER_CONNECTIONS, settings.polling.concurrency + delivery + 16)


def connect_workers(settings: Settings) -> Redis:
    """The workers' client. A burst that finds every connection busy waits for one (up to
    WORKER_CONNECTION_WAIT) instead of failing at once, as redis-py's default pool would:
    a failed commit or settle costs a poll's or a delivery's work."""
    return connect(
        settings.redis_url,
        max_connections=worker_connections(settings),
        wait=WORKER_CONNECTION_WAIT,
    )


def connect_http(url: str, workers: Redis) -> Redis:
    """The HTTP API's client, on the same store as the workers' but with a pool of its own.
    The in-process store has no pool to exhaust (and no other way in): it is shared."""
    if url.startswith(MEMORY_URL):
        return workers
    return connect(url, max_connections=HTTP_CONNECTIONS, wait=HTTP_CONNECTION_WAIT)


class SentinelPrimary(Redis):
    """A client of the primary that the sentinels name. Each new connection asks them where
    the primary is, so after a failover the connections to the old one fail, are dropped,
    and the next ones go to the new one (a demoted primary answering READONLY is dropped the
    same way). Closing it closes its sentinel connections too."""

    sentinels: Sentinel | None = None  # (`sentinel` is Redis' SENTINEL command)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        if self.sentinels is not None:
            await self.sentinels.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool, waiting for a free connection as BlockingConnectionPool does."""


def _sentinel_primary(
    target: SentinelTarget, max_connections: int | None, wait: float | None
) -> Redis:
    sentinel = Sentinel(  # type: ignore[no-untyped-call,unused-ignore]  # typed from redis-py 8
        target.sentinels,
        sentinel_kwargs={
            **_SOCKETS,
            "username": target.sentinel_username,
            "password": target.sentinel_password,
        },
    )
    options: dict[str, Any] = {
        **_OPTIONS,
        "db": target.db,
        "username": target.username,
        "password": target.password,
        "max_connections": max_connections or (HTTP_CONNECTIONS if wait is not None else None),
    }
    pool_class: type[SentinelConnectionPool] = SentinelConnectionPool
    if wait is not None:
        pool_class, options["timeout"] = _BlockingSentinelPool, wait
    client = sentinel.master_for(
        target.service, redis_class=SentinelPrimary, connection_pool_class=pool_class, **options
    )
    assert isinstance(client, SentinelPrimary)
    client.sentinels = sentinel
    return client
