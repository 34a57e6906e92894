"""One endpoint's senders: each takes a claimed event from the hand-off, waits for the
endpoint's shared rate, renews the claim when that wait was long, signs, POSTs, classifies
the answer, and hands the attempt to the settler. The Poster (sign, POST through the SSRF
guard, classify) is the one HTTP path of every delivery, a test send's too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

import aiohttp
import structlog
from opentelemetry.trace import SpanKind
from prometheus_client import Counter
from redis.exceptions import RedisError

from service import tracing
from service.config import EndpointSettings
from service.delivery.breaker_cache import BreakerCache
from service.delivery.deadlines import Deadlines
from service.delivery.handoff import Handoff
from service.delivery.policy import Attempt, Verdict, classify, crashed
from service.delivery.signing import secret_key, webhook_headers
from service.delivery.ssrf import check_url
from service.errors import AddressRefused
from service.httpspec import USER_AGENT
from service.store.claims import ClaimedEvent
from service.store.leases import LEASE_SECONDS
from service.store.limits import SharedRate
from service.store.log import RESPONSE_BODY_BYTES
from service.store.queue import EventQueue
from service.store.redis_health import log_redis_error

log = structlog.get_logger("delivery")

NO_TIMEOUT = aiohttp.ClientTimeout()
# Of an answer's body, the log keeps the first RESPONSE_BODY_BYTES; one byte more tells
# whether there was more.
RESPONSE_HEAD = RESPONSE_BODY_BYTES + 1
# Beyond its head, at most this much of a body is read (and dropped): a short answer read
# to its end leaves the connection reusable; a huge one is not read, the connection closed.
RESPONSE_DRAIN = 64 * 1024


class Settles(Protocol):
    """What a sender hands its attempts to (the Settler)."""

    async def settle(self, event: ClaimedEvent, attempt: Attempt) -> bool:
        """True when settled; False when the event is settled later (its ack on its way)."""


async def _response_head(content: aiohttp.StreamReader) -> bytes:
    """The first RESPONSE_HEAD bytes of a body (all of a shorter one); then, when there is
    more, one read of up to RESPONSE_DRAIN more to drop."""
    head = await content.read(RESPONSE_HEAD)
    while head and len(head) < RESPONSE_HEAD:
        more = await content.read(RESPONSE_HEAD - len(head))
        if not more:
            return head
        head += more
    if head and not content.at_eof():
        await content.read(RESPONSE_DRAIN)
    return head


class Poster:
    """Signs and POSTs one body to one endpoint, through the SSRF guard, and classifies the
    answer. `deadlines`: the endpoint's timeout kept by the worker's periodic check; None
    (a test send, outside any worker): by aiohttp's own timer."""

    def __init__(
        self,
        endpoint: EndpointSettings,
        session: aiohttp.ClientSession,
        clock: Callable[[], float],
        *,
        allow_private: bool,
        deadlines: Deadlines | None,
    ) -> None:
        self.endpoint = endpoint
        self.session = session
        self.clock = clock
        self.allow_private = allow_private
        self.deadlines = deadlines
        self.keys = [secret_key(s.get_secret_value()) for s in endpoint.secret]
        self._timeout = (
            NO_TIMEOUT if deadlines is not None else aiohttp.ClientTimeout(total=endpoint.timeout)
        )

    async def post(self, event_id: str, body: bytes) -> Attempt:
        now = self.clock()
        headers = webhook_headers(self.keys, event_id, int(now), body, USER_AGENT)
        started = time.perf_counter()
        timed_out = f"timed out after {self.endpoint.timeout:g}s"
        response_head: bytes | None = None
        try:
            check_url(self.endpoint.url, self.allow_private)
            with self.deadlines.request() if self.deadlines else contextlib.nullcontext():
                try:
                    async with self.session.post(
                        self.endpoint.url,
                        data=body,
                        headers=headers,
                        timeout=self._timeout,
                        allow_redirects=False,
                    ) as response:
                        response_head = await _response_head(response.content)
                        retry_after = response.headers.get("Retry-After")
                        result = classify(response.status, retry_after, now=now)
                except asyncio.CancelledError:
                    # ours when the request ran past the timeout; anyone else's (a stop) goes
                    # on. Ours can land just after a 2xx was read, as aiohttp's timer could:
                    # the event is then sent again, same id
                    if self.deadlines is None or not self.deadlines.timed_out():
                        raise
                    result = classify(None, error=timed_out, now=now)
        except (AddressRefused, aiohttp.ClientConnectorError) as e:
            refused = e if isinstance(e, AddressRefused) else e.os_error
            if isinstance(refused, AddressRefused):  # nothing was sent: the guard refused it
                log.warning(
                    "delivery_address_refused",
                    endpoint=self.endpoint.id,
                    event_id=event_id,
                    host=refused.host,
                    address=refused.address,
                )
                result = classify(None, error=f"address refused: {refused}", now=now)
            else:
                result = classify(None, error=f"{type(e).__name__}: {e}", now=now)
        except TimeoutError:  # aiohttp's own timer (no deadlines)
            result = classify(None, error=timed_out, now=now)
        except aiohttp.ClientError as e:
            result = classify(None, error=f"{type(e).__name__}: {e}", now=now)
        if result.status is None:
            response_head = None  # what a broken answer left half-read says nothing
        return Attempt(result, now, time.perf_counter() - started, response_head)


class Sender:
    """Shared by the worker's sender tasks, one per slot (`run` once per task): each sends one
    event at a time, so a worker has at most `concurrency` requests in flight."""

    def __init__(
        self,
        endpoint: EndpointSettings,
        handoff: Handoff,
        breaker: BreakerCache,
        settler: Settles,
        queue: EventQueue,
        session: aiohttp.ClientSession,
        rate: SharedRate | None,
        throttle_wait: Counter,
        clock: Callable[[], float],
        *,
        allow_private: bool,
    ) -> None:
        self.endpoint = endpoint
        self.handoff = handoff
        self.breaker = breaker
        self.settler = settler
        self.queue = queue
        self.session = session
        self.rate = rate  # the endpoint's max_per_second, shared by every process; None: none
        self.throttle_wait = throttle_wait.labels("endpoint")
        self.clock = clock
        self.deadlines = Deadlines(endpoint.timeout)  # the worker runs its check
        self.poster = Poster(
            endpoint, session, clock, allow_private=allow_private, deadlines=self.deadlines
        )

    async def run(self) -> None:
        """Deliver events from the hand-off until it closes."""
        while (event := await self.handoff.take()) is not None:
            await self.deliver(event)

    async def deliver(self, event: ClaimedEvent) -> None:
        """Send one claimed event and settle it.

        Counted as busy until its request is over, so the claimer claims more while this
        settles (until it is settled when the breaker is not closed and healthy). A failure
        is settled (the breaker updated) before this sender takes the next event, so with
        concurrency 1 the breaker sees every failure before the next request; a success's
        ack goes in a batch nobody waits for.
        """
        requesting, settled = True, True
        started, attempts = time.perf_counter(), event.meta.attempts
        try:
            if not self.breaker.may_send(event, self.clock()):
                # due again at once, for whichever process may send
                await self.queue.reschedule(self.endpoint.id, event, int(self.clock() * 1000))
            elif (attempt := await self._attempt(event)) is not None:
                if self.breaker.healthy():  # the claimer may claim on while this settles
                    requesting = False
                    self.handoff.request_over()
                # else (a probe, a failure after failures) the claimer waits for the breaker
                # this settle changes, so a successful probe lets the rest flow at once
                settled = await self.settler.settle(event, attempt)
        except RedisError as e:  # the claim runs out and the event is sent again, same id
            log_redis_error(
                log, "delivery_redis_error", e, endpoint=self.endpoint.id, event_id=event.event_id
            )
        except asyncio.CancelledError:
            raise  # stays held: the worker hands it back to the queue
        except Exception as e:  # a bug must not kill the sender
            log.exception("delivery_crashed", endpoint=self.endpoint.id, event_id=event.event_id)
            event.meta.attempts = attempts  # a settle that crashed midway may have counted it
            took = time.perf_counter() - started
            crash = Attempt(crashed(f"{type(e).__name__}: {e}"), self.clock() - took, took)
            settled = await self._settle_crash(event, crash)
        finally:
            if requesting:
                self.handoff.request_over()
        if settled:
            self.handoff.settled(event)

    async def _settle_crash(self, event: ClaimedEvent, crash: Attempt) -> bool:
        """A bug while delivering is a failed attempt of this event, its error recorded: so it
        follows the schedule into the dead letters, not back every lease period forever. The
        settle's writes are fenced by the claim, so one that had gone through is not redone."""
        try:
            return await self.settler.settle(event, crash)
        except RedisError as e:  # the claim runs out and the event is sent again, same id
            log_redis_error(
                log, "delivery_redis_error", e, endpoint=self.endpoint.id, event_id=event.event_id
            )
        except Exception:  # the settler itself is broken: the claim brings the event back
            log.exception(
                "delivery_settle_crashed", endpoint=self.endpoint.id, event_id=event.event_id
            )
        return True

    async def _attempt(self, event: ClaimedEvent) -> Attempt | None:
        """Send once, after the endpoint's rate allows; None when the claim was lost."""
        if self.rate is not None:
            await self._throttle(self.rate)
        now = self.clock()
        if event.held_until - now < LEASE_SECONDS / 2:
            # the worker's heartbeat keeps the claim, through a wait for the rate too; it
            # fell behind (Redis failing) or found the claim lost: renew it here, or leave
            # the event to the worker that took it over, so it is never sent twice
            if not await self.queue.extend(self.endpoint.id, event, now, LEASE_SECONDS):
                return None
        if not tracing.enabled():  # nothing of the span's to build, event by event
            return await self.poster.post(event.event_id, event.body)
        return await self._traced_post(event)

    async def _traced_post(self, event: ClaimedEvent) -> Attempt:
        """The POST in a span, child of the commit that queued the event (its traceparent,
        from another process maybe), or a trace of its own for an event queued without one."""
        attributes: dict[str, str | int] = {
            "http.request.method": "POST",
            "lms_webhooks.endpoint_id": self.endpoint.id,
            "lms_webhooks.event_id": event.event_id,
            "lms_webhooks.attempt": event.meta.attempts + 1,
        }
        with tracing.span(
            "delivery attempt", attributes, kind=SpanKind.CLIENT, parent=event.meta.traceparent
        ) as current:
            attempt = await self.poster.post(event.event_id, event.body)
            result = attempt.result
            if result.status is not None:
                current.set_attribute("http.response.status_code", result.status)
            if result.verdict is not Verdict.SUCCESS:
                error = result.error or ""
                current.set_attribute("lms_webhooks.error", tracing.without_query(error)[:500])
                tracing.failed(current, str(result.status or error.partition(":")[0][:60]))
        return attempt

    async def _throttle(self, rate: SharedRate) -> None:
        """Wait for the endpoint's shared rate."""
        while (wait := await rate.try_acquire()) > 0:
            self.throttle_wait.inc(wait)
            await asyncio.sleep(wait)
