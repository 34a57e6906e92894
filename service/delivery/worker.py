"""One endpoint's deliveries: claim from its queue, send `concurrency` at a time, settle."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import TYPE_CHECKING

import aiohttp
import structlog
from redis.exceptions import RedisError

from service import __version__
from service.config import EndpointSettings
from service.delivery.acks import AckBatcher
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
from service.store.limits import Budget
from service.store.queue import ClaimedEvent
from service.timefmt import parse_iso

if TYPE_CHECKING:
    from service.delivery.dispatcher import Dispatcher

log = structlog.get_logger("delivery")

USER_AGENT = f"lms-webhooks/{__version__}"
IDLE_WAIT = 0.5  # longest sleep of an idle worker before it looks at Redis again
# How old the endpoint's breaker state may be while it is active: another process's pause is
# seen this late, and a busy worker does not read it before every claim.
HEALTH_REFRESH = 0.25
# A claimed event's lease: the endpoint timeout, its throttle wait and this margin. A crashed
# process's events are sent again once it runs out.
LEASE_MARGIN = 5.0


# Our bodies start {"id":…,"type":…,"timestamp":…: the detection time without parsing 2 kB
_TIMESTAMP = re.compile(r'"timestamp":"([^"]{1,40})"')


def detected_at(body: str) -> str | None:
    """The event's `timestamp` (when the change was detected), for the latency metric."""
    found = _TIMESTAMP.search(body, 0, 200)
    return found.group(1) if found else None


class EndpointWorker:
    """Claims, sends and settles one endpoint's events, `concurrency` at a time."""

    def __init__(self, endpoint: EndpointSettings, dispatcher: Dispatcher) -> None:
        self.endpoint = endpoint
        self.d = dispatcher
        self.keys = [secret_key(s.get_secret_value()) for s in endpoint.secret]
        self.wakeup = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()  # the senders
        # every event this process holds a lease on, until acked, retried or handed back
        self.claimed: dict[str, ClaimedEvent] = {}
        # claimed, waiting for a sender; a queue wakes one sender per event, not all of them
        self.ready: asyncio.Queue[ClaimedEvent | None] = asyncio.Queue()
        self.health = EndpointHealth()
        self.acks = AckBatcher(dispatcher.queue, endpoint.id)
        self._batch = max(1, endpoint.concurrency // 4)
        self._success_noted = 0.0
        self._health_read = 0.0
        # bound once: a bound logger and metric children cost a lookup on every delivery
        self.log = log.bind(endpoint=endpoint.id)
        self._latency = dispatcher.metrics.delivery_latency.labels(endpoint.id)
        self._timeout = aiohttp.ClientTimeout(total=endpoint.timeout)
        # events taken by a sender whose request is not over (waiting for a slot included)
        self.sending = 0
        self._slots = asyncio.Semaphore(endpoint.concurrency)
        self._room = asyncio.Event()  # a request ended: room to claim more
        self._probe_event_id: str | None = None  # the one event a probing worker may send
        self._health_changes = 0  # bumped by every local change of `health`

    async def run(self) -> None:
        """Keep `concurrency` requests going: senders take claimed events from `ready`, and
        this loop claims more (a quarter of the slots at a time) before they run out."""
        limit = self.endpoint.concurrency
        # twice the slots: a sender waiting for its ack holds no connection
        self.inflight = {
            asyncio.create_task(self._sender(), name=f"send:{self.endpoint.id}")
            for _ in range(2 * limit)
        }
        try:
            while self.d.accepting:
                await self._claim_more(limit)
        finally:
            self.stop_senders()

    def stop_senders(self) -> None:
        """Each sender ends after its current delivery; events still ready stay claimed."""
        for _ in self.inflight:
            self.ready.put_nowait(None)

    async def _claim_more(self, limit: int) -> None:
        endpoint_id = self.endpoint.id
        self._room.clear()
        busy = self.sending + self.ready.qsize()
        try:
            now = self.d.clock()
            if now - self._health_read >= HEALTH_REFRESH or self.health.status != ACTIVE:
                seen = self._health_changes
                health = await self.d.endpoints.health(endpoint_id)
                if seen == self._health_changes:  # else a settle knows better meanwhile
                    self.health = health
                self._health_read = now
            allowed, wait = gate(self.health, now)
            if allowed is Gate.CLOSED:
                await self._sleep(min(wait, CLOSED_RECHECK))
                return
            want = limit + self._batch - busy  # the slots, and the next batch ready to go
            if allowed is Gate.PROBE:  # a single delivery decides, sent by one process
                want = 0 if busy else 1
                probing = want and await self.d.endpoints.try_probe(
                    endpoint_id, self._lease_seconds(1)
                )
                if probing:
                    self._probe_event_id = None  # set to the event claimed for it below
                self.log.debug("endpoint_probe", probing=bool(probing), busy=busy)
                if want and not probing:
                    await self._sleep(CLOSED_RECHECK)
                    return
            if busy and (want <= 0 or (want < self._batch and allowed is not Gate.PROBE)):
                # claims go in batches, not one round trip per finished delivery; bounded,
                # so a stop is noticed while every slot hangs
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._room.wait(), IDLE_WAIT)
                return
            lease = int((now + self._lease_seconds(max(want, 1))) * 1000)
            batch = await self.d.queue.claim(endpoint_id, int(now * 1000), lease, max(want, 1))
        except RedisError as e:
            self.log.warning("dispatch_redis_error", error=str(e))
            await self._sleep(1.0)
            return
        except Exception:  # a bug must not end this endpoint's deliveries for good
            self.log.exception("dispatch_loop_error")
            await self._sleep(1.0)
            return
        if allowed is Gate.PROBE and batch:
            self._probe_event_id = batch[0].event_id
        for event in batch:
            if (mine := self.claimed.get(event.event_id)) is not None:
                mine.token = event.token  # still in flight here: keep one sender, new lease
                continue
            self.claimed[event.event_id] = event
            self.ready.put_nowait(event)
        if not batch:
            await self._sleep(IDLE_WAIT)

    async def _sender(self) -> None:
        """One of the worker's senders: deliver ready events until the dispatcher stops."""
        while (event := await self.ready.get()) is not None and self.d.accepting:
            self.sending += 1
            await self._deliver(event)

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
        budget = Budget(f"endpoint:{self.endpoint.id}", per_second)
        while (wait := await self.d.limiter.try_acquire(budget)) > 0:
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
                timeout=self._timeout,
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

    def _may_send(self, event: ClaimedEvent) -> bool:
        """The breaker, checked again just before sending: a claimed event waits in `ready`
        for a moment, and the endpoint may have been paused meanwhile."""
        allowed, _ = gate(self.health, self.d.clock())
        return allowed is Gate.OPEN or (
            allowed is Gate.PROBE and event.event_id == self._probe_event_id
        )

    def _set_health(self, health: EndpointHealth) -> None:
        self.health = health
        self._health_changes += 1

    def _sent(self) -> None:
        self.sending -= 1
        self._room.set()

    async def _deliver(self, event: ClaimedEvent) -> None:
        """Send one claimed event and settle it.

        Counted in `sending` until its request is over. The slot is held until the outcome
        is settled, except for a plain success: its ack joins the next batch while another
        request goes out. So with concurrency 1 the breaker sees every failure before the
        next request is sent.
        """
        endpoint_id = self.endpoint.id
        sending = True
        try:
            later: tuple[AttemptResult, float] | None = None
            async with self._slots:
                if not self.d.accepting:  # stopping: stays claimed, stop() hands it back
                    return
                if not self._may_send(event):  # hand it back: due again, for whoever may send
                    await self.d.queue.reschedule(endpoint_id, event, int(self.d.clock() * 1000))
                elif (attempt := await self._attempt(event)) is not None:
                    healthy = self.health.status == ACTIVE and not self.health.consecutive_failures
                    if attempt[0].verdict is Verdict.SUCCESS and healthy:
                        later = attempt
                    else:
                        await self._settle(event, *attempt)
                sending = False
                self._sent()
            if later is not None:
                await self._settle(event, *later)
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
        finally:
            if sending:
                self._sent()
        self.claimed.pop(event.event_id, None)

    async def _attempt(self, event: ClaimedEvent) -> tuple[AttemptResult, float] | None:
        """Send once, after the endpoint's rate allows; None when the claim was lost."""
        waited = await self._throttle()
        left = event.token / 1000 - self.d.clock()
        if waited or left < self.endpoint.timeout + LEASE_MARGIN / 2:
            # the wait for the rate, or for a free slot, may have outlasted the claim: renew
            # it, or leave the event to the worker that took it over, so it is never sent twice
            lease = int((self.d.clock() + self._lease_seconds(1)) * 1000)
            if not await self.d.queue.extend(self.endpoint.id, event, lease):
                return None
        return await self._send(event)

    async def _settle(self, event: ClaimedEvent, result: AttemptResult, duration: float) -> None:
        d, endpoint_id = self.d, self.endpoint.id
        now = d.clock()
        event.meta.attempts += 1
        decision = decide(
            result, event.meta.attempts, d.settings.delivery.retry_schedule, now, d.rng
        )
        d.metrics.deliveries.labels(endpoint_id, result.verdict.value).inc()
        self.log.info(
            "delivery_attempt",
            event_id=event.event_id,
            attempt=event.meta.attempts,
            status=result.status,
            error=result.error,
            duration_ms=round(duration * 1000, 1),
            action=decision.action.value,
            next_attempt_in=None if decision.due is None else round(decision.due - now, 3),
        )
        if decision.action is Action.ACK:
            await self.acks.ack(event)
            await self._note_success(now)
            detected = parse_iso(detected_at(event.body))
            if detected is not None:
                self._latency.observe(now - detected.timestamp())
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
        self._set_health(health)  # a Retry-After hold changes no status, yet holds every sender
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
            self._set_health(
                await self.d.endpoints.update(self.endpoint.id, lambda h: after_success(h, now))
            )
            log.info("endpoint_recovered", endpoint=self.endpoint.id, status=self.health.status)
            self._success_noted = now
        elif now - self._success_noted >= 1.0:
            await self.d.endpoints.touch_success(self.endpoint.id, now)
            self._success_noted = now
