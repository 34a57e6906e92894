"""Each endpoint's durable delivery queue: due events, claims, retries, dead letters.

An event leaves `due` only by an acknowledged 2xx or by being dead-lettered; a worker that
dies holding one lets its claim run out and another worker sends it again, same id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar, cast

from redis.asyncio import Redis

from service.contract import admin as m
from service.store import log_body
from service.store.claims import ClaimedEvent, DeliveryMeta
from service.store.keys import EndpointKeys
from service.store.scripts import (
    LEASED,
    AckEvents,
    ClaimEvents,
    DeadLetterEvent,
    ExtendLeases,
    MoveEvent,
    ReplayDead,
    hold,
    lease_ms,
)


class _TokenUse:
    """One endpoint's fenced writes and the renewal of its claims never overlap. A renewal
    gives each claim a new token: a write that read the old one and reached Redis after it
    would find its claim lost, and the event would be sent again. Writes share the way;
    a renewal waits for those under way and holds new ones back for its round trip."""

    def __init__(self) -> None:
        self.writes = 0
        self.no_writes = asyncio.Event()
        self.no_writes.set()
        self.no_renewal = asyncio.Event()
        self.no_renewal.set()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        while not self.no_renewal.is_set():  # no switch to another task when there is none
            await self.no_renewal.wait()
        self.writes += 1
        self.no_writes.clear()
        try:
            yield
        finally:
            self.writes -= 1
            if not self.writes:
                self.no_writes.set()

    @asynccontextmanager
    async def renewal(self) -> AsyncIterator[None]:
        self.no_renewal.clear()
        try:
            await self.no_writes.wait()
            yield
        finally:
            self.no_renewal.set()


_T = TypeVar("_T")


async def _reclaimed_too(event: ClaimedEvent, write: Callable[[], Awaitable[_T]]) -> _T:
    """A fenced write of one event, once more with the new token when this process claimed
    the event again while the write was on its way (its claim had run out: Handoff.offer
    gives the held event the new claim), which is this process's claim as well."""
    sent = event.token
    result = await write()
    if not result and event.token != sent:
        result = await write()
    return result


class EventQueue:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._claim = ClaimEvents(redis)
        self._ack = AckEvents(redis)
        self._dead_letter = DeadLetterEvent(redis)
        self._move = MoveEvent(redis)
        self._extend = ExtendLeases(redis)
        self._replay = ReplayDead(redis)
        self._token_use: dict[str, _TokenUse] = {}  # per endpoint

    def _writing(self, endpoint_id: str) -> _TokenUse:
        return self._token_use.setdefault(endpoint_id, _TokenUse())

    async def claim(
        self, endpoint_id: str, now: float, seconds: float, limit: int
    ) -> list[ClaimedEvent]:
        """Up to `limit` events due by `now` (this process's clock), or whose claim ran out
        (Redis' clock), claimed for `seconds` on Redis' clock."""
        return await self._claim(
            endpoint_id, int(now * 1000), lease_ms(seconds), limit, held_until=now + seconds
        )

    async def ack_many(self, endpoint_id: str, events: list[ClaimedEvent]) -> list[bool]:
        """Delivered, each fenced by its own claim; False where the claim was lost."""
        async with self._writing(endpoint_id).write():
            sent = [event.token for event in events]
            done = await self._ack(endpoint_id, events)
            again = [i for i, ok in enumerate(done) if not ok and events[i].token != sent[i]]
            if again:  # claimed again by this process meanwhile: that claim is ours too
                redone = await self._ack(endpoint_id, [events[i] for i in again])
                for i, ok in zip(again, redone, strict=True):
                    done[i] = ok
            return done

    async def ack(self, endpoint_id: str, event: ClaimedEvent) -> bool:
        return (await self.ack_many(endpoint_id, [event]))[0]

    async def dead_letter(
        self, endpoint_id: str, event: ClaimedEvent, now_ms: int, record: str = ""
    ) -> bool:
        async with self._writing(endpoint_id).write():
            return await _reclaimed_too(
                event, lambda: self._dead_letter(endpoint_id, event, now_ms, record)
            )

    async def extend(
        self, endpoint_id: str, event: ClaimedEvent, now: float, seconds: float
    ) -> bool:
        """Keep a claim `seconds` longer from `now` (fenced); False when another worker has
        taken the event over."""
        async with self._writing(endpoint_id).write():
            token = await self._move(endpoint_id, event, hold(seconds), None)
        if token is None:
            return False
        event.token, event.held_until = token, now + seconds
        return True

    async def extend_held(
        self, endpoint_id: str, events: list[ClaimedEvent], now: float, seconds: float
    ) -> list[ClaimedEvent]:
        """A worker's heartbeat: every claim it holds runs `seconds` longer from `now`, in
        one script call (never shortened). Returns the events whose claims were lost."""
        async with self._writing(endpoint_id).renewal():
            held = [(event.event_id, event.token) for event in events]
            tokens = await self._extend(EndpointKeys(endpoint_id).due, lease_ms(seconds), held)
            lost = []
            for event, (_, sent), token in zip(events, held, tokens, strict=True):
                if event.token != sent:  # claimed again meanwhile (Handoff.offer): that one holds
                    continue
                if token is None:  # its sender, if it has not sent yet, checks again
                    event.held_until = 0.0
                    lost.append(event)
                else:
                    event.token, event.held_until = token, max(event.held_until, now + seconds)
        return lost

    async def reschedule(
        self, endpoint_id: str, event: ClaimedEvent, due_ms: int, record: str = ""
    ) -> bool:
        """End the claim: due again at `due_ms`, with what the attempts so far left behind;
        `record`: the attempt that failed, for the delivery log ("": none was made)."""
        async with self._writing(endpoint_id).write():
            moved = await _reclaimed_too(
                event, lambda: self._move(endpoint_id, event, due_ms, event.meta, record)
            )
        return moved is not None

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

    async def dead_letters(self, endpoint_id: str, limit: int = 100) -> list[m.DeadLetter]:
        """The endpoint's oldest dead letters first, each with what its attempts left."""
        ep = EndpointKeys(endpoint_id)
        raw = await self.redis.zrange(ep.dead, 0, limit - 1, withscores=True)
        pairs = cast(list[tuple[str, float]], raw)
        if not pairs:
            return []
        ids = [event_id for event_id, _ in pairs]
        bodies = cast(list[str | None], await self.redis.hmget(ep.body, ids))
        metas = cast(list[str | None], await self.redis.hmget(ep.meta, ids))
        out = []
        for (event_id, score), body, raw_meta in zip(pairs, bodies, metas, strict=True):
            # the meta's fields this version does not know (DeliveryMeta.extra) are kept for
            # the event's retries, not shown: no version writes any
            meta = DeliveryMeta.decode(raw_meta)
            out.append(
                m.DeadLetter(
                    event_id=event_id,
                    dead_at_ms=int(score),
                    event=json.loads(log_body.queued_body(body.encode())) if body else None,
                    attempts=meta.attempts,
                    last_error=meta.last_error,
                    last_status=meta.last_status,
                    last_attempt_at=meta.last_attempt_at,
                )
            )
        return out
