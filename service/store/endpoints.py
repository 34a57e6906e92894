"""Each endpoint's health in Redis, changed with optimistic transactions across processes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from service.endpoint_health import LAST_SUCCESS_FIELD, EndpointHealth
from service.store.keys import EndpointKeys


class EndpointStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def health(self, endpoint_id: str) -> EndpointHealth:
        raw = await self.redis.hgetall(EndpointKeys(endpoint_id).state)
        return EndpointHealth.from_hash(cast(dict[str, str], raw))

    async def update(
        self, endpoint_id: str, change: Callable[[EndpointHealth], EndpointHealth]
    ) -> EndpointHealth:
        """Apply `change` atomically: retried when another process changed the state first."""
        key = EndpointKeys(endpoint_id).state
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = cast(dict[str, str], await pipe.hgetall(key))
                    current = EndpointHealth.from_hash(raw)
                    new = change(current)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new != current:
                        pipe.hset(key, mapping=cast(Any, new.to_hash()))
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def touch_success(self, endpoint_id: str, now: float) -> None:
        """A success on a healthy endpoint only moves `last_success_at`; no transaction."""
        await self.redis.hset(EndpointKeys(endpoint_id).state, LAST_SUCCESS_FIELD, str(now))

    async def try_probe(self, endpoint_id: str, seconds: float, holder: str) -> bool:
        """One process at a time sends the probe of a paused endpoint; the lock runs out
        after `seconds` (a probe's lease) unless `end_probe` gives it up first."""
        acquired = await self.redis.set(
            EndpointKeys(endpoint_id).probe, holder, nx=True, px=max(1, int(seconds * 1000))
        )
        return bool(acquired)

    async def end_probe(self, endpoint_id: str, holder: str) -> None:
        """Give up the probe lock, if `holder` still has it: it may have run out meanwhile and
        been taken by another process, whose probe is in flight."""
        key = EndpointKeys(endpoint_id).probe
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(key)
                if await pipe.get(key) == holder:
                    pipe.multi()  # type: ignore[no-untyped-call]
                    pipe.delete(key)
                    await pipe.execute()
            except WatchError:
                pass  # taken or run out meanwhile: not ours to give up
