"""Rate limits every process shares: a GCRA per name on Redis' clock, and the API-key pause."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import GCRA_ACQUIRE, PAUSE


@dataclass(frozen=True, slots=True)
class Budget:
    """A shared rate: `burst` requests may go back to back, beyond that 1/per_second apart.
    While `pause_key` exists (a Retry-After pause), nothing goes."""

    name: str
    per_second: float
    burst: float = 1.0
    pause_key: str | None = None

    def script_keys(self) -> list[str]:
        rate = keys.rate_limit(self.name)
        return [rate, self.pause_key or rate + ":nopause"]

    def script_args(self) -> list[float]:
        emission_ms = 1000.0 / self.per_second
        return [emission_ms, emission_ms * max(self.burst - 1.0, 0.0)]


class SharedLimiter:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._acquire = redis.register_script(GCRA_ACQUIRE)
        self._pause = redis.register_script(PAUSE)

    async def try_acquire(self, budget: Budget) -> float:
        """0 when a request may go now, else seconds to wait before asking again."""
        wait_ms = await self._acquire(keys=budget.script_keys(), args=budget.script_args())
        return float(wait_ms) / 1000.0

    async def pause(self, pause_key: str, seconds: float) -> None:
        """Pause everyone using `pause_key` for at least `seconds` (never shortens a pause)."""
        await self._pause(keys=[pause_key], args=[max(1, int(seconds * 1000))])
