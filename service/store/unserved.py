"""The tracked resources an account's provider does not serve (its completions route
answering 404, say), skipped for that account until a retry time, by every process."""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from service.resources import Resource
from service.store import keys
from service.store.scripts import Held, MarkUnserved


class UnservedResources:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._mark = MarkUnserved(redis)

    async def served(
        self, account_id: str, resources: Sequence[Resource], now_ms: int
    ) -> tuple[Resource, ...]:
        """`resources` but those after the first marked unserved until after `now_ms` (no
        Redis call for an account that tracks one resource)."""
        later = list(resources[1:])
        if not later:
            return tuple(resources)
        members = [keys.unserved_member(account_id, r) for r in later]
        until = await self.redis.zmscore(keys.UNSERVED_RESOURCES, members)
        skipped = {r for r, ms in zip(later, until, strict=True) if ms is not None and ms > now_ms}
        return tuple(r for r in resources if r not in skipped)

    async def mark(self, account_id: str, resource: Resource, retry_at_ms: int, held: Held) -> bool:
        """Not read until `retry_at_ms`; False when it was marked until then or later already
        (another read meanwhile), or when the `held` lease of the read that found it unserved
        no longer holds (nothing written: the account may have been forgotten meanwhile)."""
        return await self._mark(held, keys.unserved_member(account_id, resource), retry_at_ms)
