"""Each endpoint's health in Redis: active or disabled, failures, last error, last success."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis

from service.store.keys import EndpointKeys

ACTIVE = "active"
DISABLED = "disabled"


class EndpointStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def state(self, endpoint_id: str) -> dict[str, Any]:
        raw = await self.redis.hgetall(EndpointKeys(endpoint_id).state)
        return {
            "status": raw.get("status", ACTIVE),
            "consecutive_failures": int(raw.get("consecutive_failures", 0)),
            "failing_since": float(raw["failing_since"]) if raw.get("failing_since") else None,
            "last_error": raw.get("last_error") or None,
            "last_success_at": float(raw["last_success_at"])
            if raw.get("last_success_at")
            else None,
            "disabled_reason": raw.get("disabled_reason") or None,
        }

    async def is_disabled(self, endpoint_id: str) -> bool:
        return await self.redis.hget(EndpointKeys(endpoint_id).state, "status") == DISABLED

    async def record_success(self, endpoint_id: str, now: float) -> None:
        await self.redis.hset(
            EndpointKeys(endpoint_id).state,
            mapping={"consecutive_failures": 0, "failing_since": "", "last_success_at": now},
        )

    async def record_failure(self, endpoint_id: str, now: float, error: str) -> float:
        """Count a failure; returns since when the endpoint has failed without a success."""
        key = EndpointKeys(endpoint_id).state
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hincrby(key, "consecutive_failures", 1)
            pipe.hset(key, "last_error", error)
            pipe.hget(key, "failing_since")
            _, _, since = await pipe.execute()
        if since:
            return float(since)
        await self.redis.hset(key, "failing_since", now)
        return now

    async def disable(self, endpoint_id: str, reason: str) -> None:
        await self.redis.hset(
            EndpointKeys(endpoint_id).state, mapping={"status": DISABLED, "disabled_reason": reason}
        )

    async def enable(self, endpoint_id: str) -> None:
        await self.redis.hset(
            EndpointKeys(endpoint_id).state,
            mapping={
                "status": ACTIVE,
                "disabled_reason": "",
                "consecutive_failures": 0,
                "failing_since": "",
            },
        )
