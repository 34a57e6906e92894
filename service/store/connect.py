"""Creating the Redis clients: a real server, or the in-process store for the demo."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, ConnectionPool, Redis

MEMORY_URL = "memory://"

# The HTTP API's own client: a few connections, and a request that finds them all busy
# waits for one (up to HTTP_CONNECTION_WAIT) instead of failing at once as redis-py's
# default pool does. Its pool is not the workers': a flood of requests can slow the API down,
# never take a connection a poll or a delivery needs.
HTTP_CONNECTIONS = 8
HTTP_CONNECTION_WAIT = 5.0

_OPTIONS: dict[str, Any] = {
    "decode_responses": True,
    "socket_connect_timeout": 5,
    "socket_timeout": 10,
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
    pool: ConnectionPool
    if wait is None:
        pool = ConnectionPool.from_url(url, max_connections=max_connections, **_OPTIONS)
    else:
        pool = BlockingConnectionPool.from_url(
            url, max_connections=max_connections or HTTP_CONNECTIONS, timeout=wait, **_OPTIONS
        )
    return Redis.from_pool(pool)


def connect_http(url: str, workers: Redis) -> Redis:
    """The HTTP API's client, on the same store as the workers' but with a pool of its own.
    The in-process store has no pool to exhaust (and no other way in): it is shared."""
    if url.startswith(MEMORY_URL):
        return workers
    return connect(url, max_connections=HTTP_CONNECTIONS, wait=HTTP_CONNECTION_WAIT)
