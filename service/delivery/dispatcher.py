"""The dispatcher: one worker per endpoint, so a slow endpoint never stalls another."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp
from redis.exceptions import RedisError

from service.config import Settings
from service.delivery.worker import EndpointWorker
from service.metrics import Metrics
from service.store.endpoints import EndpointStore
from service.store.limits import SharedLimiter
from service.store.queue import EventQueue


class Dispatcher:
    def __init__(
        self,
        queue: EventQueue,
        endpoints: EndpointStore,
        limiter: SharedLimiter,
        session: aiohttp.ClientSession,
        settings: Settings,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.queue = queue
        self.endpoints = endpoints
        self.limiter = limiter
        self.session = session
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.rng = rng or random.Random()
        self.workers = {e.id: EndpointWorker(e, self) for e in settings.endpoints}
        self.loops: list[asyncio.Task[None]] = []
        self.accepting = False

    @property
    def running(self) -> bool:
        return self.accepting and all(not t.done() for t in self.loops)

    def start(self) -> None:
        self.accepting = True
        self.loops = [
            asyncio.create_task(w.run(), name=f"dispatch:{w.endpoint.id}")
            for w in self.workers.values()
        ]

    def wake(self, endpoint_ids: set[str]) -> None:
        """Events were just committed for these endpoints: look now, not at the next idle tick."""
        for endpoint_id in endpoint_ids:
            if worker := self.workers.get(endpoint_id):
                worker.wakeup.set()

    async def stop(self, timeout: float) -> None:
        """Claim nothing new; let deliveries in flight finish in `timeout`, hand back the rest."""
        self.accepting = False
        for worker in self.workers.values():
            worker.wakeup.set()  # its loop ends, and with it its senders
        await asyncio.gather(*self.loops, return_exceptions=True)
        inflight = {t for w in self.workers.values() for t in w.inflight}
        if inflight:
            _, pending = await asyncio.wait(inflight, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        now_ms = int(self.clock() * 1000)
        for worker in self.workers.values():
            for event in list(worker.claimed.values()):  # unfinished: due again at once
                try:
                    await self.queue.reschedule(worker.endpoint.id, event, now_ms)
                except RedisError:
                    pass  # its lease runs out by itself
