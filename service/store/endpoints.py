"""Each endpoint's health in Redis, changed with optimistic transactions across processes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from service.delivery.breaker import EndpointHealth
from service.store.keys import EndpointKeys

_FLOATS = {"failing_since", "paused_until", "last_success_at", "hold_until"}


def decode_health(raw: dict[str, str]) -> EndpointHealth:
    values: dict[str, object] = {}
    for field in fields(EndpointHealth):
        value = raw.get(field.name)
        if not value:
            continue
        if field.name in ("consecutive_failures", "pauses"):
            values[field.name] = int(value)
        elif field.name in _FLOATS:
            values[field.name] = float(value)
        else:
            values[field.name] = value
    return EndpointHealth(**values)  # type: ignore[arg-type]


def encode_health(health: EndpointHealth) -> dict[str, str]:
    return {k: "" if v is None else str(v) for k, v in asdict(health).items()}


class EndpointStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def health(self, endpoint_id: str) -> EndpointHealth:
        raw = await self.redis.hgetall(EndpointKeys(endpoint_id).state)
        return decode_health(cast(dict[str, str], raw))

    async def update(
        self, endpoint_id: str, change: Callable[[EndpointHealth], EndpointHealth]
    ) -> EndpointHealth:
        """Apply `change` atomically: retried when another process changed the state first."""
        key = EndpointKeys(endpoint_id).state
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    current = decode_health(cast(dict[str, str], await pipe.hgetall(key)))
                    new = change(current)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if new != current:
                        pipe.hset(key, mapping=cast(Any, encode_health(new)))
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    async def touch_success(self, endpoint_id: str, now: float) -> None:
        """A success on a healthy endpoint only moves `last_success_at`; no transaction."""
        await self.redis.hset(EndpointKeys(endpoint_id).state, "last_success_at", str(now))

    async def try_probe(self, endpoint_id: str, seconds: float) -> bool:
        """One process at a time sends the probe of a paused endpoint."""
        acquired = await self.redis.set(
            EndpointKeys(endpoint_id).probe, "1", nx=True, px=max(1, int(seconds * 1000))
        )
        return bool(acquired)
