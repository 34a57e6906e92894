"""Each endpoint's durable delivery queue: due events, leases, retries, dead letters.

An event leaves `due` only by an acknowledged 2xx or by being dead-lettered; a worker that
dies holding one lets its lease run out and another worker sends it again, same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from service.store.keys import EndpointKeys
from service.store.scripts import (
    ACK_EVENTS,
    CLAIM_EVENTS,
    DEAD_LETTER_EVENT,
    EXTEND_LEASE,
    REPLAY_DEAD,
    RESCHEDULE_EVENT,
)


@dataclass(slots=True)
class DeliveryMeta:
    """What earlier attempts of one event left behind."""

    attempts: int = 0
    last_error: str | None = None
    last_status: int | None = None
    last_attempt_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "last_error": self.last_error,
            "last_status": self.last_status,
            "last_attempt_at": self.last_attempt_at,
            **self.extra,
        }

    def encode(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def decode(cls, raw: str | None) -> DeliveryMeta:
        if not raw:
            return cls()
        data = json.loads(raw)
        return cls(
            attempts=int(data.pop("attempts", 0)),
            last_error=data.pop("last_error", None),
            last_status=data.pop("last_status", None),
            last_attempt_at=data.pop("last_attempt_at", None),
            extra=data,
        )


@dataclass(slots=True)
class ClaimedEvent:
    event_id: str
    body: str
    meta: DeliveryMeta
    token: int  # the lease expiry that fences this claim


class EventQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = redis.register_script(CLAIM_EVENTS)
        self._ack = redis.register_script(ACK_EVENTS)
        self._reschedule = redis.register_script(RESCHEDULE_EVENT)
        self._dead = redis.register_script(DEAD_LETTER_EVENT)
        self._extend = redis.register_script(EXTEND_LEASE)
        self._replay = redis.register_script(REPLAY_DEAD)

    async def claim(
        self, endpoint_id: str, now_ms: int, lease_until_ms: int, limit: int
    ) -> list[ClaimedEvent]:
        ep = EndpointKeys(endpoint_id)
        flat = await self._claim(
            keys=[ep.due, ep.body, ep.meta], args=[now_ms, lease_until_ms, limit]
        )
        return [
            ClaimedEvent(flat[i], flat[i + 1], DeliveryMeta.decode(flat[i + 2]), lease_until_ms)
            for i in range(0, len(flat), 3)
        ]

    async def ack(self, endpoint_id: str, event: ClaimedEvent) -> bool:
        return (await self.ack_many(endpoint_id, [event]))[0]

    async def ack_many(self, endpoint_id: str, events: list[ClaimedEvent]) -> list[bool]:
        """Delivered: gone from the queue, each fenced by its own token, in one round trip."""
        ep = EndpointKeys(endpoint_id)
        args = [x for event in events for x in (event.event_id, event.token)]
        done = await self._ack(keys=[ep.due, ep.body, ep.meta], args=args)
        return [bool(flag) for flag in done]

    async def extend(self, endpoint_id: str, event: ClaimedEvent, lease_until_ms: int) -> bool:
        """Keep a claim (fenced); False when another worker has taken the event over."""
        done = await self._extend(
            keys=[EndpointKeys(endpoint_id).due], args=[event.event_id, event.token, lease_until_ms]
        )
        if done:
            event.token = lease_until_ms
        return bool(done)

    async def reschedule(self, endpoint_id: str, event: ClaimedEvent, due_ms: int) -> bool:
        ep = EndpointKeys(endpoint_id)
        done = await self._reschedule(
            keys=[ep.due, ep.meta], args=[event.event_id, event.token, due_ms, event.meta.encode()]
        )
        return bool(done)

    async def dead_letter(self, endpoint_id: str, event: ClaimedEvent, now_ms: int) -> bool:
        ep = EndpointKeys(endpoint_id)
        done = await self._dead(
            keys=[ep.due, ep.dead, ep.meta],
            args=[event.event_id, event.token, now_ms, event.meta.encode()],
        )
        return bool(done)

    async def replay(
        self, endpoint_id: str, now_ms: int, event_ids: list[str] | None = None
    ) -> int:
        """Queue dead letters again, same ids; atomic, so a crash mid-replay loses none."""
        ep = EndpointKeys(endpoint_id)
        queued: int = await self._replay(
            keys=[ep.due, ep.dead, ep.meta], args=[now_ms, *(event_ids or [])]
        )
        return queued

    async def next_due_ms(self, endpoint_id: str) -> float | None:
        first = await self.redis.zrange(EndpointKeys(endpoint_id).due, 0, 0, withscores=True)
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
