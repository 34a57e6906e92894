"""Creating the Redis client: a real server, or the in-process store for the demo."""

from __future__ import annotations

from redis.asyncio import Redis

MEMORY_URL = "memory://"


def connect(url: str) -> Redis:
    """`memory://` is an in-process Redis (fakeredis with Lua): nothing is durable."""
    if url.startswith(MEMORY_URL):
        import fakeredis  # imported here: only the demo and dev setups need it

        fake: Redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        return fake
    return Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        socket_timeout=10,
        health_check_interval=30,
        retry_on_timeout=False,
    )
