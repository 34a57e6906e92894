"""One endpoint's settler: what an attempt's outcome changes. A success is acknowledged (in
batches); a failure updates the shared breaker when it shows the endpoint unwell, then the
event is retried later or dead-lettered."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import structlog
from prometheus_client import Counter, Histogram

from service.delivery.acks import AckBatcher
from service.delivery.breaker import after_failure, after_success
from service.delivery.breaker_cache import BreakerCache
from service.delivery.policy import Action, Attempt, AttemptResult, Verdict, decide
from service.store.claims import ClaimedEvent
from service.store.endpoints import EndpointStore
from service.store.log import attempt_record
from service.store.queue import EventQueue
from service.timefmt import parse_iso

log = structlog.get_logger("delivery")


class Settler:
    def __init__(
        self,
        endpoint_id: str,
        queue: EventQueue,
        endpoints: EndpointStore,
        acks: AckBatcher,
        breaker: BreakerCache,
        *,
        retry_schedule: Sequence[float],
        disable_after: float,
        deliveries: Counter,
        latency: Histogram,
        clock: Callable[[], float],
        rng: random.Random,
    ) -> None:
        self.endpoint_id = endpoint_id
        self.queue = queue
        self.endpoints = endpoints
        self.acks = acks
        self.breaker = breaker
        self.retry_schedule = retry_schedule
        self.disable_after = disable_after
        # metric children and the bound logger, looked up once: each costs a lookup per event
        self.deliveries = {v: deliveries.labels(endpoint_id, v.value) for v in Verdict}
        self.latency = latency.labels(endpoint_id)
        self.log = log.bind(endpoint=endpoint_id)
        self.clock = clock
        self.rng = rng
        self._success_noted = 0.0
        self._stamp: str | None = None
        self._stamp_at: float | None = None

    async def settle(self, event: ClaimedEvent, attempt: Attempt) -> bool:
        """True when the event is settled; False when its ack is on its way (the ack batcher
        settles it once Redis has it). The delivery log records the attempt in the same
        round trip as the ack, the retry or the dead letter."""
        now = self.clock()
        result, duration = attempt.result, attempt.duration
        event.meta.attempts += 1
        decision = decide(result, event.meta.attempts, self.retry_schedule, now, self.rng)
        record = attempt_record(
            attempt=event.meta.attempts,
            started_at_ms=int(attempt.started_at * 1000),
            duration_ms=round(duration * 1000, 1),
            status=result.status,
            error=result.error,
            response=attempt.response,
            next_attempt_at_ms=None if decision.due is None else int(decision.due * 1000),
        )
        self.deliveries[result.verdict].inc()
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
            event.record = record
            self.acks.add(event)
            await self._note_success(now)
            detected = self._detected_at(event.head.timestamp)
            if detected is not None:
                self.latency.observe(now - detected)
            return False
        event.meta.last_status = result.status
        event.meta.last_error = result.error
        event.meta.last_attempt_at = now
        if result.unwell or result.verdict is Verdict.GONE:
            await self._note_failure(result, now)
        else:  # this event's own failure (a 4xx): the breaker neither counts it nor takes it
            # for a sign of health, so the failure streak stays as it was
            if event.event_id == self.breaker.probe_event_id:
                await self._end_probe()
        if decision.action is Action.DEAD:
            await self.queue.dead_letter(self.endpoint_id, event, int(now * 1000), record)
            log.warning(
                "event_dead_lettered",
                endpoint=self.endpoint_id,
                event_id=event.event_id,
                attempts=event.meta.attempts,
                last_error=result.error,
            )
        else:
            assert decision.due is not None
            await self.queue.reschedule(self.endpoint_id, event, int(decision.due * 1000), record)
        return True

    def _detected_at(self, stamp: str) -> float | None:
        """When the event's change was detected (epoch s), from its `timestamp`. A poll
        stamps all its events alike, so a stamp is parsed once for a run of them."""
        if stamp != self._stamp:
            parsed = parse_iso(stamp)
            self._stamp, self._stamp_at = stamp, None if parsed is None else parsed.timestamp()
        return self._stamp_at

    async def _note_failure(self, result: AttemptResult, now: float) -> None:
        before = self.breaker.health.status
        health = await self.endpoints.update(
            self.endpoint_id,
            lambda h: after_failure(
                h,
                now,
                result.error or "",
                gone=result.verdict is Verdict.GONE,
                disable_after=self.disable_after,
                retry_after=result.retry_after,
            ),
        )
        if health.status != before:
            log.warning(
                "endpoint_state_changed",
                endpoint=self.endpoint_id,
                status=health.status.value,
                failures=health.consecutive_failures,
                reason=health.disabled_reason,
                paused_until=health.paused_until,
            )
        self.breaker.set(health)  # a Retry-After hold changes no status, yet holds every sender

    async def _end_probe(self) -> None:
        """The probe of a paused endpoint failed for a reason of its own (a 4xx): that says
        nothing of the endpoint, so the next due event probes at once, not after the lock
        runs out (a lease later)."""
        self.breaker.probe_event_id = None
        await self.endpoints.end_probe(self.endpoint_id, self.breaker.probe_holder)

    async def _note_success(self, now: float) -> None:
        """Close the breaker when it was not closed; else just note the time, once a second."""
        if not self.breaker.healthy():
            health = await self.endpoints.update(self.endpoint_id, lambda h: after_success(h, now))
            self.breaker.set(health)
            log.info("endpoint_recovered", endpoint=self.endpoint_id, status=health.status.value)
            self._success_noted = now
        elif now - self._success_noted >= 1.0:
            # noted before the write: one that fails (Redis out of memory, say) is tried
            # again a second later, not on every success meanwhile
            self._success_noted = now
            await self.endpoints.touch_success(self.endpoint_id, now)
