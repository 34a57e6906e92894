"""Every store on one Redis client, built once by whoever runs the service or a tool."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from service.config import Settings
from service.store.endpoints import EndpointStore
from service.store.leases import PollLeases
from service.store.limits import SharedLimiter
from service.store.polls import PollStore
from service.store.queue import EventQueue
from service.store.users import TrackedUsers


@dataclass(frozen=True)
class Stores:
    redis: Redis
    queue: EventQueue
    endpoints: EndpointStore
    polls: PollStore
    leases: PollLeases
    users: TrackedUsers
    limiter: SharedLimiter

    @classmethod
    def on(cls, redis: Redis, settings: Settings, clock: Callable[[], float] = time.time) -> Stores:
        return cls(
            redis=redis,
            queue=EventQueue(redis),
            endpoints=EndpointStore(redis),
            polls=PollStore(redis),
            leases=PollLeases(redis, clock=clock),
            users=TrackedUsers(redis, settings),
            limiter=SharedLimiter(redis),
        )
