"""Rate limits every process shares: a GCRA per name on Redis' clock, and the API-key pause."""

from __future__ import annotations

from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import GCRA_ACQUIRE, PAUSE


class SharedLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(GCRA_ACQUIRE)
        self._pause = redis.register_script(PAUSE)

    async def try_acquire(
        self, name: str, per_second: float, burst: float = 1.0, pause_key: str | None = None
    ) -> float:
        """0 when a request may go now, else seconds to wait before asking again.

        `burst` requests may go back to back; beyond that they are spaced 1/per_second apart.
        While `pause_key` exists (a Retry-After pause), nothing goes.
        """
        emission_ms = 1000.0 / per_second
        tolerance_ms = emission_ms * max(burst - 1.0, 0.0)
        wait_ms = await self._acquire(
            keys=[keys.rate_limit(name), pause_key or keys.rate_limit(name) + ":nopause"],
            args=[emission_ms, tolerance_ms],
        )
        return float(wait_ms) / 1000.0

    async def pause(self, pause_key: str, seconds: float) -> None:
        """Pause everyone using `pause_key` for at least `seconds` (never shortens a pause)."""
        await self._pause(keys=[pause_key], args=[max(1, int(seconds * 1000))])
