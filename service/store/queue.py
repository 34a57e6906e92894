"""Each endpoint's durable delivery queue: due events, claims, retries, dead letters.

An event leaves `due` only by an acknowledged 2xx or by being dead-lettered; a worker that
dies holding one lets its claim run out and another worker sends it again, same id.
"""

from __future__ import annotations

import json
from typing import Any, cast

from redis.asyncio import Redis

from service.store.claims import ClaimedEvent, DeliveryMeta
from service.store.keys import EndpointKeys
from service.store.scripts import (
    LEASED,
    AckEvents,
    ClaimEvents,
    DeadLetterEvent,
    MoveEvent,
    ReplayDead,
    hold,
    lease_ms,
)


class EventQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = ClaimEvents(redis)
        self.ack_many = AckEvents(redis)  # delivered, each fenced by its own token
        self.dead_letter = DeadLetterEvent(redis)
        self._move = MoveEvent(redis)
        self._replay = ReplayDead(redis)

    async def claim(
        self, endpoint_id: str, now: float, seconds: float, limit: int
    ) -> list[ClaimedEvent]:
        """Up to `limit` events due by `now` (this process's clock), or whose claim ran out
        (Redis' clock), claimed for `seconds` on Redis' clock."""
        return await self._claim(
            endpoint_id, int(now * 1000), lease_ms(seconds), limit, held_until=now + seconds
        )

    async def ack(self, endpoint_id: str, event: ClaimedEvent) -> bool:
        return (await self.ack_many(endpoint_id, [event]))[0]

    async def extend(
        self, endpoint_id: str, event: ClaimedEvent, now: float, seconds: float
    ) -> bool:
        """Keep a claim `seconds` longer from `now` (fenced); False when another worker has
        taken the event over."""
        token = await self._move(endpoint_id, event, hold(seconds), None)
        if token is None:
            return False
        event.token, event.held_until = token, now + seconds
        return True

    async def reschedule(
        self, endpoint_id: str, event: ClaimedEvent, due_ms: int, record: str = ""
    ) -> bool:
        """End the claim: due again at `due_ms`, with what the attempts so far left behind;
        `record`: the attempt that failed, for the delivery log ("": none was made)."""
        return await self._move(endpoint_id, event, due_ms, event.meta, record) is not None

    async def replay(
        self, endpoint_id: str, now_ms: int, event_ids: list[str] | None = None
    ) -> int:
        """Queue dead letters again, same ids; atomic, so a crash mid-replay loses none."""
        return await self._replay(endpoint_id, now_ms, event_ids)

    async def next_due_ms(self, endpoint_id: str) -> float | None:
        """The earliest due time of an event waiting (claimed ones are not waiting)."""
        first = await self.redis.zrangebyscore(
            EndpointKeys(endpoint_id).due, "-inf", f"({LEASED}", start=0, num=1, withscores=True
        )
        return float(first[0][1]) if first else None

    async def depth(self, endpoint_id: str) -> int:
        depth: int = await self.redis.zcard(EndpointKeys(endpoint_id).due)
        return depth

    async def dead_count(self, endpoint_id: str) -> int:
        count: int = await self.redis.zcard(EndpointKeys(endpoint_id).dead)
        return count

    async def dead_letters(self, endpoint_id: str, limit: int = 100) -> list[dict[str, Any]]:
        ep = EndpointKeys(endpoint_id)
        raw = await self.redis.zrange(ep.dead, 0, limit - 1, withscores=True)
        pairs = cast(list[tuple[str, float]], raw)
        if not pairs:
            return []
        ids = [event_id for event_id, _ in pairs]
        bodies = cast(list[str | None], await self.redis.hmget(ep.body, ids))
        metas = cast(list[str | None], await self.redis.hmget(ep.meta, ids))
        return [
            {
                "event_id": event_id,
                "dead_at_ms": int(score),
                "event": json.loads(body) if body else None,
                **DeliveryMeta.decode(meta).as_dict(),
            }
            for (event_id, score), body, meta in zip(pairs, bodies, metas, strict=True)
        ]
