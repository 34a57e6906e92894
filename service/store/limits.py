"""Rate limits every process shares: a GCRA per name on Redis' clock, and Retry-After pauses."""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import GcraAcquire, Pause

# Of the burst, what a yielding request may use: the rest is kept for the requests that go
# first (the reads of the accounts read fastest while the key is oversubscribed), so they
# pass a backlog of the others' instead of waiting behind it.
YIELD_SHARE = 0.5


@dataclass(frozen=True, slots=True)
class RateLimit:
    """A shared rate: `burst` requests may go back to back, beyond that 1/per_second apart.
    While `pause_key` exists (a Retry-After pause), nothing goes."""

    name: str
    per_second: float
    burst: float = 1.0
    pause_key: str | None = None

    def script_keys(self) -> list[str]:
        rate = keys.rate_limit(self.name)
        return [rate, self.pause_key or rate + ":nopause"]

    def script_args(self, yielding: bool = False) -> list[float]:
        emission_ms = 1000.0 / self.per_second
        tolerance = emission_ms * max(self.burst - 1.0, 0.0)
        return [emission_ms, tolerance * YIELD_SHARE if yielding else tolerance]


def api_key_rate(per_minute: int) -> RateLimit:
    """The upstream API key's budget, shared by every process and every account.

    Up to a second's worth may go back to back (smooth, never a minute's budget at once); the
    steady rate leaves room for that burst, so no 60 s window exceeds `per_minute`."""
    burst = max(1.0, min(per_minute / 60.0, per_minute * 0.05))
    per_second = max(per_minute - burst, 1.0) / 60.0
    return RateLimit(keys.UPSTREAM_RATE, per_second, burst, keys.UPSTREAM_PAUSE)


class SharedRate:
    """One rate limit, asked for permits by whoever sends through it (the upstream client, one
    endpoint's senders)."""

    def __init__(self, limit: RateLimit, acquire: GcraAcquire, pause: Pause) -> None:
        self.limit = limit
        self._acquire = acquire
        self._pause = pause

    async def try_acquire(self, yielding: bool = False) -> float:
        """0 when a request may go now, else seconds to wait before asking again; a
        `yielding` one leaves part of the burst to the others (YIELD_SHARE)."""
        return await self._acquire(self.limit.script_keys(), self.limit.script_args(yielding))

    async def pause(self, seconds: float) -> None:
        """Pause everyone on this rate for at least `seconds` (never shortens a pause)."""
        if self.limit.pause_key is None:
            raise ValueError(f"the rate {self.limit.name!r} has no pause")
        await self._pause(self.limit.pause_key, seconds)


def endpoint_rate(endpoint_id: str, max_per_second: float | None) -> RateLimit | None:
    """An endpoint's `max_per_second`, shared by every process; None: unlimited."""
    if max_per_second is None:
        return None
    return RateLimit(keys.endpoint_rate(endpoint_id), max_per_second)


class SharedLimiter:
    """Where shared rates come from: one per rate limit, on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._acquire = GcraAcquire(redis)
        self._pause = Pause(redis)

    async def pause_left(self, pause_key: str) -> float | None:
        """Seconds a Retry-After pause has still to run; None when there is none."""
        ms: int = await self._redis.pttl(pause_key)
        return ms / 1000 if ms > 0 else None

    def rate(self, limit: RateLimit) -> SharedRate:
        return SharedRate(limit, self._acquire, self._pause)
