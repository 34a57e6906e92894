"""One endpoint's claimer: keeps its senders supplied with claimed events, in batches,
as far as the breaker lets it (the whole flow control of a worker)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from enum import Enum

import structlog
from redis.exceptions import RedisError

from service.config import EndpointSettings
from service.delivery.breaker import OPEN_RECHECK, Circuit
from service.delivery.breaker_cache import BreakerCache
from service.delivery.handoff import Handoff
from service.store.endpoints import EndpointStore
from service.store.leases import LEASE_SECONDS
from service.store.queue import EventQueue
from service.store.redis_health import log_redis_error

log = structlog.get_logger("delivery")

IDLE_WAIT = 0.5  # longest sleep of an idle claimer before it looks at Redis again
# The probe lock's length: the endpoint timeout and this margin (a probe is one request).
PROBE_MARGIN = 5.0


def probe_seconds(endpoint: EndpointSettings) -> float:
    """How long one process holds the right to probe a half-open endpoint."""
    return endpoint.timeout + PROBE_MARGIN


class Claimed(Enum):
    """What one claim round did, and so what the claimer does next."""

    SOME = "some"  # events went to the senders: claim again
    FULL = "full"  # enough is in flight: wait for room
    NONE_DUE = "none_due"  # the queue has nothing due: wait for new events
    WITHHELD = "withheld"  # the circuit is open, or another process probes: wait


class Claimer:
    def __init__(
        self,
        endpoint: EndpointSettings,
        handoff: Handoff,
        breaker: BreakerCache,
        queue: EventQueue,
        endpoints: EndpointStore,
        clock: Callable[[], float],
    ) -> None:
        self.endpoint = endpoint
        self.handoff = handoff
        self.breaker = breaker
        self.queue = queue
        self.endpoints = endpoints
        self.clock = clock
        # a full round of slots at a time: a claim's round trip costs the CPU of several
        # deliveries, so claiming often (a quarter of the slots) cost more than it kept busy
        self.batch = endpoint.concurrency
        self.wakeup = asyncio.Event()  # new events were committed, or the endpoint enabled
        self.wait = 0.0  # after WITHHELD: how long the circuit stays open, at most

    async def run(self) -> None:
        """Claim until the hand-off closes; a failing Redis or a bug only pauses it."""
        while not self.handoff.closed:
            try:
                claimed = await self.claim()
            except RedisError as e:
                log_redis_error(log, "dispatch_redis_error", e, endpoint=self.endpoint.id)
                await self.sleep(1.0)
                continue
            except Exception:  # a bug must not end this endpoint's deliveries for good
                log.exception("dispatch_loop_error", endpoint=self.endpoint.id)
                await self.sleep(1.0)
                continue
            if self.handoff.closed:
                return
            if claimed is Claimed.FULL:
                # bounded, so a stop is noticed while every slot hangs
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.handoff.room.wait(), IDLE_WAIT)
            elif claimed is Claimed.WITHHELD:
                await self.sleep(self.wait)
            elif claimed is Claimed.NONE_DUE:
                await self.sleep(IDLE_WAIT)

    async def claim(self) -> Claimed:
        """One round: claim what the senders can take now (a round of slots at a time, before
        they run dry), or one probe when the breaker is half-open."""
        self.handoff.room.clear()
        busy = self.handoff.busy()
        now = self.clock()
        await self.breaker.refresh(now)
        state, wait = self.breaker.circuit(now)
        if state is Circuit.OPEN:
            self.wait = min(wait, OPEN_RECHECK)
            return Claimed.WITHHELD
        if state is Circuit.HALF_OPEN:  # a single delivery decides, sent by one process
            if busy:
                return Claimed.FULL
            probing = await self.endpoints.try_probe(
                self.endpoint.id, probe_seconds(self.endpoint), self.breaker.probe_holder
            )
            log.debug("endpoint_probe", endpoint=self.endpoint.id, probing=probing)
            if not probing:
                self.wait = OPEN_RECHECK
                return Claimed.WITHHELD
            want = 1
        else:
            want = self.endpoint.concurrency + self.batch - busy  # the slots and one batch
            if busy and want < self.batch:  # claims go in batches, not one per delivery
                return Claimed.FULL
        if self.handoff.closed:  # stopping: claim nothing more to hand back
            return Claimed.WITHHELD
        # a short claim, which the worker's heartbeat renews while the event is held here:
        # a process that dies leaves its events, sent or waiting, to the others in seconds
        batch = await self.queue.claim(self.endpoint.id, now, LEASE_SECONDS, want)
        if state is Circuit.HALF_OPEN:
            self.breaker.probe_event_id = batch[0].event_id if batch else None
        for event in batch:
            self.handoff.offer(event)
        return Claimed.SOME if batch else Claimed.NONE_DUE

    async def sleep(self, seconds: float) -> None:
        """Until `seconds` pass or something wakes the claimer up."""
        self.wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wakeup.wait(), seconds)
