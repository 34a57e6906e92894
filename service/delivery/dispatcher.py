"""The dispatcher: one worker per endpoint, so a slow endpoint never stalls another."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import aiohttp

from service.config import Settings
from service.delivery.worker import EndpointWorker
from service.metrics import Metrics
from service.store.endpoints import EndpointStore
from service.store.limits import SharedLimiter, endpoint_rate
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
        rng = rng or random.Random()
        self.workers: dict[str, EndpointWorker] = {}
        for endpoint in settings.endpoints:
            limit = endpoint_rate(endpoint.id, endpoint.max_per_second)
            self.workers[endpoint.id] = EndpointWorker(
                endpoint,
                settings.delivery,
                queue,
                endpoints,
                None if limit is None else limiter.rate(limit),
                session,
                metrics,
                clock=clock,
                rng=rng,
            )
        self.started = False

    @property
    def running(self) -> bool:
        return self.started and all(w.running for w in self.workers.values())

    def start(self) -> None:
        self.started = True
        for worker in self.workers.values():
            worker.start()

    async def drain(self) -> int:
        """Burst mode (tests, tools): every endpoint's due events delivered and settled, none
        left due now. Returns the claim rounds that found work."""
        rounds = await asyncio.gather(*(w.drain() for w in self.workers.values()))
        return sum(rounds)

    def wake(self, endpoint_ids: set[str]) -> None:
        """Events were just committed for these endpoints: look now, not at the next idle tick."""
        for endpoint_id in endpoint_ids:
            if worker := self.workers.get(endpoint_id):
                worker.wake()

    async def stop(self, timeout: float) -> None:
        """Each worker claims nothing new, lets its deliveries in flight finish in `timeout`,
        and hands back the rest."""
        self.started = False
        await asyncio.gather(*(w.stop(timeout) for w in self.workers.values()))
