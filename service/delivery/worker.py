"""One endpoint's deliveries: a claimer, senders and a settler, joined by the hand-off.

claimer ──claimed events──► hand-off ──► senders (one per slot) ──► settler ──► acks
   │                            │             │                       │
   │                        heartbeat: renews every claim held, once a second
   └─────────────── breaker cache: read by all three, changed by settles
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable

import aiohttp
import structlog
from redis.exceptions import RedisError

from service.config import DeliverySettings, EndpointSettings
from service.delivery.acks import AckBatcher
from service.delivery.breaker_cache import BreakerCache
from service.delivery.claimer import IDLE_WAIT, Claimed, Claimer
from service.delivery.handoff import Handoff
from service.delivery.sender import Sender
from service.delivery.settler import Settler
from service.metrics import Metrics
from service.store.endpoints import EndpointStore
from service.store.leases import HEARTBEAT_SECONDS, LEASE_SECONDS
from service.store.limits import SharedRate
from service.store.queue import EventQueue
from service.store.redis_health import log_redis_error

log = structlog.get_logger("delivery")


class EndpointWorker:
    def __init__(
        self,
        endpoint: EndpointSettings,
        delivery: DeliverySettings,
        queue: EventQueue,
        endpoints: EndpointStore,
        rate: SharedRate | None,
        session: aiohttp.ClientSession,
        metrics: Metrics,
        *,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.endpoint = endpoint
        self.queue = queue
        self.clock = clock
        self.handoff = Handoff()
        breaker = BreakerCache(endpoint.id, endpoints)
        self.breaker = breaker
        self.claimer = Claimer(endpoint, self.handoff, breaker, queue, endpoints, clock)
        self.acks = AckBatcher(
            queue,
            endpoint.id,
            lambda event, _acked: self.handoff.settled(event),  # acked or not: done with it
            batch=endpoint.concurrency,
        )
        settler = Settler(
            endpoint.id,
            queue,
            endpoints,
            self.acks,
            breaker,
            retry_schedule=delivery.retry_schedule,
            disable_after=delivery.disable_after,
            deliveries=metrics.deliveries,
            latency=metrics.delivery_latency,
            clock=clock,
            rng=rng,
        )
        self.sender = Sender(
            endpoint,
            self.handoff,
            breaker,
            settler,
            queue,
            session,
            rate,
            metrics.throttle_wait,
            clock,
            allow_private=delivery.allow_private_addresses,
        )
        self.senders: set[asyncio.Task[None]] = set()
        self.deadlines: asyncio.Task[None] | None = None
        self.claiming: asyncio.Task[None] | None = None
        self.renewing: asyncio.Task[None] | None = None
        self.stop_renewing = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.claiming is not None and not self.claiming.done()

    def wake(self) -> None:
        """Events were just committed (or the endpoint enabled): claim now, not at the next
        idle tick."""
        self.claimer.wakeup.set()

    def start(self) -> None:
        self._start_senders()
        self.claiming = asyncio.create_task(self.claimer.run(), name=f"claim:{self.endpoint.id}")

    async def heartbeat(self) -> None:
        """Claims are short (LEASE_SECONDS): renew every one held here, waiting for a sender
        or being sent, in one round trip a second, so only a process that died (or stalled)
        leaves its events to the others, and then within seconds."""
        stopping = self.stop_renewing
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), HEARTBEAT_SECONDS)
            held = list(self.handoff.held.values())
            if not held or stopping.is_set():
                continue
            try:
                lost = await self.queue.extend_held(
                    self.endpoint.id, held, self.clock(), LEASE_SECONDS
                )
            except RedisError as e:  # the senders renew before sending what ran out
                log_redis_error(log, "claims_extend_failed", e, endpoint=self.endpoint.id)
                continue
            except Exception:  # a bug must not leave every claim here to run out
                log.exception("claims_extend_crashed", endpoint=self.endpoint.id)
                continue
            if lost:  # this process stalled: those not sent yet are skipped, not sent twice
                log.warning("claims_lost", endpoint=self.endpoint.id, events=len(lost))

    async def _stop_heartbeat(self) -> None:
        """Ends the heartbeat between two renewals, never during one: a renewal cut off
        after Redis ran it would leave this process with tokens Redis no longer has, and
        the hand-back that follows would write nothing."""
        if self.renewing is not None:
            self.stop_renewing.set()
            await asyncio.gather(self.renewing, return_exceptions=True)
            self.renewing = None

    def _start_senders(self) -> None:
        self.stop_renewing = asyncio.Event()
        self.renewing = asyncio.create_task(self.heartbeat(), name=f"renew:{self.endpoint.id}")
        self.senders = {
            asyncio.create_task(self.sender.run(), name=f"send:{self.endpoint.id}")
            for _ in range(self.endpoint.concurrency)
        }
        self.deadlines = asyncio.create_task(
            self.sender.deadlines.run(), name=f"deadlines:{self.endpoint.id}"
        )

    async def drain(self) -> int:
        """Burst mode, without a running claimer: deliver every event due now until none is
        (or the breaker withholds the rest), and wait until each is settled. Returns how many
        claim rounds found work."""
        assert not self.running, "drain() is the burst mode of a worker that was not started"
        self._start_senders()
        rounds = 0
        try:
            while True:
                claimed = await self.claimer.claim()
                if claimed is Claimed.SOME:
                    rounds += 1
                elif claimed is Claimed.FULL:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.handoff.room.wait(), IDLE_WAIT)
                elif self.handoff.held:
                    await self.handoff.all_settled()  # a settle may make an event due again
                else:
                    return rounds
        finally:
            self.handoff.end_senders(len(self.senders))
            await self._stop_senders(timeout=None)
            await self._stop_heartbeat()

    async def stop(self, timeout: float) -> None:
        """Claim nothing new; let deliveries in flight finish in `timeout`, then hand back
        what this process still holds: due again at once, for any process."""
        deadline = asyncio.get_running_loop().time() + timeout
        self.handoff.close(len(self.senders))
        self.wake()
        if self.claiming is not None:
            await asyncio.gather(self.claiming, return_exceptions=True)
        await self._stop_senders(timeout)
        left = deadline - asyncio.get_running_loop().time()
        with contextlib.suppress(TimeoutError):  # what was delivered is not handed back
            await asyncio.wait_for(self.acks.flush(), max(left, 0.1))
        await self._stop_heartbeat()  # what is still held is handed back now
        await self.hand_back()

    async def _stop_senders(self, timeout: float | None) -> None:
        """Wait for the senders to end (told so through the hand-off), cancel the rest."""
        if not self.senders:
            return
        _, pending = await asyncio.wait(self.senders, timeout=timeout)
        if self.deadlines is not None:
            pending.add(self.deadlines)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        self.senders, self.deadlines = set(), None

    async def hand_back(self) -> int:
        """Every event still held here, due again at once; returns how many."""
        now_ms = int(self.clock() * 1000)
        handed = 0
        for event in list(self.handoff.held.values()):
            try:
                handed += await self.queue.reschedule(self.endpoint.id, event, now_ms)
            except RedisError:
                pass  # its claim runs out by itself
            self.handoff.settled(event)
        return handed
