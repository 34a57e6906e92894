"""The dispatcher: one worker loop per endpoint, so a slow endpoint never stalls another."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable

import aiohttp
import structlog
from redis.exceptions import RedisError

from service import __version__
from service.config import EndpointSettings, Settings
from service.delivery.breaker import (
    ACTIVE,
    CLOSED_RECHECK,
    EndpointHealth,
    Gate,
    after_failure,
    after_success,
    gate,
)
from service.delivery.policy import Action, AttemptResult, Verdict, classify, decide
from service.delivery.signing import secret_key, webhook_headers
from service.delivery.ssrf import check_url
from service.errors import AddressRefused
from service.metrics import Metrics
from service.store.endpoints import EndpointStore
from service.store.limits import SharedLimiter
from service.store.queue import ClaimedEvent, EventQueue
from service.timefmt import parse_iso

log = structlog.get_logger("delivery")

USER_AGENT = f"lms-webhooks/{__version__}"
IDLE_WAIT = 0.5  # longest sleep of an idle worker before it looks at Redis again
# A claimed event's lease: the endpoint timeout, its throttle wait and this margin. A crashed
# process's events are sent again once it runs out.
LEASE_MARGIN = 5.0


class EndpointWorker:
    """Claims, sends and settles one endpoint's events, `concurrency` at a time."""

    def __init__(self, endpoint: EndpointSettings, dispatcher: Dispatcher) -> None:
        self.endpoint = endpoint
        self.d = dispatcher
        self.keys = [secret_key(s.get_secret_value()) for s in endpoint.secret]
        self.wakeup = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()
        self.claimed: dict[str, ClaimedEvent] = {}
        self.health = EndpointHealth()
        self._success_noted = 0.0

    async def run(self) -> None:
        endpoint_id = self.endpoint.id
        while self.d.accepting:
            try:
                now = self.d.clock()
                self.health = await self.d.endpoints.health(endpoint_id)
                allowed, wait = gate(self.health, now)
                if allowed is Gate.CLOSED:
                    await self._sleep(min(wait, CLOSED_RECHECK))
                    continue
                free = self.endpoint.concurrency - len(self.inflight)
                if allowed is Gate.PROBE:  # a single delivery decides, sent by one process
                    free = 0 if self.inflight else 1
                    probing = free and await self.d.endpoints.try_probe(
                        endpoint_id, self._lease_seconds(1)
                    )
                    log.debug(
                        "endpoint_probe",
                        endpoint=endpoint_id,
                        probing=bool(probing),
                        inflight=len(self.inflight),
                    )
                    if free and not probing:
                        await self._sleep(CLOSED_RECHECK)
                        continue
                if free <= 0:
                    # bounded, so a stop is noticed even while every slot hangs
                    await asyncio.wait(
                        self.inflight, timeout=IDLE_WAIT, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                lease = int((now + self._lease_seconds(free)) * 1000)
                batch = await self.d.queue.claim(endpoint_id, int(now * 1000), lease, free)
            except RedisError as e:
                log.warning("dispatch_redis_error", endpoint=endpoint_id, error=str(e))
                await self._sleep(1.0)
                continue
            except Exception:  # a bug must not end this endpoint's deliveries for good
                log.exception("dispatch_loop_error", endpoint=endpoint_id)
                await self._sleep(1.0)
                continue
            for event in batch:
                if (mine := self.claimed.get(event.event_id)) is not None:
                    mine.token = event.token  # still in flight here: keep one sender, new lease
                    continue
                self.claimed[event.event_id] = event
                task = asyncio.create_task(self._deliver(event))
                self.inflight.add(task)
                task.add_done_callback(self.inflight.discard)
            if not batch:
                await self._sleep(IDLE_WAIT)

    def _lease_seconds(self, batch: int) -> float:
        throttle = batch / self.endpoint.max_per_second if self.endpoint.max_per_second else 0.0
        return self.endpoint.timeout + throttle + LEASE_MARGIN

    async def _sleep(self, seconds: float) -> None:
        self.wakeup.clear()
        try:
            await asyncio.wait_for(self.wakeup.wait(), seconds)
        except TimeoutError:
            pass

    async def _throttle(self) -> float:
        """Wait for the endpoint's shared rate; returns how long that took."""
        per_second = self.endpoint.max_per_second
        waited = 0.0
        if per_second is None:
            return waited
        name = f"endpoint:{self.endpoint.id}"
        while (wait := await self.d.limiter.try_acquire(name, per_second)) > 0:
            self.d.metrics.throttle_wait.labels("endpoint").inc(wait)
            waited += wait
            await asyncio.sleep(wait)
        return waited

    async def _send(self, event: ClaimedEvent) -> tuple[AttemptResult, float]:
        timestamp = int(self.d.clock())
        headers = webhook_headers(self.keys, event.event_id, timestamp, event.body, USER_AGENT)
        started = time.perf_counter()
        try:
            check_url(self.endpoint.url, self.d.settings.delivery.allow_private_addresses)
            async with self.d.session.post(
                self.endpoint.url,
                data=event.body.encode(),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.endpoint.timeout),
                allow_redirects=False,
            ) as response:
                # a small read keeps the connection reusable; a huge body is never buffered
                await response.content.read(64 * 1024)
                result = classify(response.status, response.headers.get("Retry-After"))
        except TimeoutError:
            result = classify(None, error=f"timed out after {self.endpoint.timeout:g}s")
        except (AddressRefused, aiohttp.ClientConnectorError) as e:
            refused = e if isinstance(e, AddressRefused) else e.os_error
            if not isinstance(refused, AddressRefused):
                result = classify(None, error=f"{type(e).__name__}: {e}")
            else:  # nothing was sent: the guard refused the address
                log.warning(
                    "delivery_address_refused",
                    endpoint=self.endpoint.id,
                    event_id=event.event_id,
                    host=refused.host,
                    address=refused.address,
                )
                result = classify(None, error=f"address refused: {refused}")
        except aiohttp.ClientError as e:
            result = classify(None, error=f"{type(e).__name__}: {e}")
        return result, time.perf_counter() - started

    async def _deliver(self, event: ClaimedEvent) -> None:
        endpoint_id = self.endpoint.id
        try:
            if await self._throttle():
                # the wait may have outlasted the claim: renew it, or leave the event to the
                # worker that took it over, so it is never sent twice
                lease = int((self.d.clock() + self._lease_seconds(1)) * 1000)
                if not await self.d.queue.extend(endpoint_id, event, lease):
                    self.claimed.pop(event.event_id, None)
                    return
            result, duration = await self._send(event)
            await self._settle(event, result, duration)
        except RedisError as e:  # the lease runs out and the event is sent again, same id
            log.warning(
                "delivery_settle_failed",
                endpoint=endpoint_id,
                event_id=event.event_id,
                error=str(e),
            )
        except asyncio.CancelledError:
            raise  # stays in `claimed`: stop() hands it back to the queue
        except Exception:  # a bug must not kill the worker; the lease brings the event back
            log.exception("delivery_crashed", endpoint=endpoint_id, event_id=event.event_id)
        self.claimed.pop(event.event_id, None)

    async def _settle(self, event: ClaimedEvent, result: AttemptResult, duration: float) -> None:
        d, endpoint_id = self.d, self.endpoint.id
        now = d.clock()
        event.meta.attempts += 1
        decision = decide(
            result, event.meta.attempts, d.settings.delivery.retry_schedule, now, d.rng
        )
        d.metrics.deliveries.labels(endpoint_id, result.verdict.value).inc()
        log.info(
            "delivery_attempt",
            endpoint=endpoint_id,
            event_id=event.event_id,
            attempt=event.meta.attempts,
            status=result.status,
            error=result.error,
            duration_ms=round(duration * 1000, 1),
            action=decision.action.value,
            next_attempt_in=None if decision.due is None else round(decision.due - now, 3),
        )
        if decision.action is Action.ACK:
            await d.queue.ack(endpoint_id, event)
            await self._note_success(now)
            detected = parse_iso(json.loads(event.body).get("timestamp"))
            if detected is not None:
                d.metrics.delivery_latency.labels(endpoint_id).observe(now - detected.timestamp())
            return
        event.meta.last_status = result.status
        event.meta.last_error = result.error
        event.meta.last_attempt_at = now
        error = result.error or ""
        health = await d.endpoints.update(
            endpoint_id,
            lambda h: after_failure(
                h,
                now,
                error,
                gone=result.verdict is Verdict.GONE,
                disable_after=d.settings.delivery.disable_after,
                retry_after=result.retry_after,
            ),
        )
        if health.status != self.health.status:
            log.warning(
                "endpoint_state_changed",
                endpoint=endpoint_id,
                status=health.status,
                failures=health.consecutive_failures,
                reason=health.disabled_reason,
                paused_until=health.paused_until,
            )
            self.health = health
        if decision.action is Action.DEAD:
            await d.queue.dead_letter(endpoint_id, event, int(now * 1000))
            log.warning(
                "event_dead_lettered",
                endpoint=endpoint_id,
                event_id=event.event_id,
                attempts=event.meta.attempts,
                last_error=result.error,
            )
        else:
            assert decision.due is not None
            await d.queue.reschedule(endpoint_id, event, int(decision.due * 1000))

    async def _note_success(self, now: float) -> None:
        """Close the breaker when it was not closed; else just note the time, once a second."""
        if self.health.consecutive_failures or self.health.status != ACTIVE:
            self.health = await self.d.endpoints.update(
                self.endpoint.id, lambda h: after_success(h, now)
            )
            log.info("endpoint_recovered", endpoint=self.endpoint.id, status=self.health.status)
            self._success_noted = now
        elif now - self._success_noted >= 1.0:
            await self.d.endpoints.touch_success(self.endpoint.id, now)
            self._success_noted = now


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
            worker.wakeup.set()
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
