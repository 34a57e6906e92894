"""Operations on the delivery log: the events logged and their attempts, test sends, and
redelivery of logged events (the admin API's `/admin/events` and the console's pages)."""

from __future__ import annotations

import asyncio
import secrets
from typing import get_args

import structlog

from service import jsonfmt
from service.changes.events import TEST, TestEvent
from service.changes.outbox import EventHead
from service.contract import admin as m
from service.delivery.policy import Verdict
from service.delivery.sender import Poster
from service.errors import InvalidInput
from service.operations.base import OperationsBase, page_limit
from service.store.limits import endpoint_rate
from service.store.log import OUTCOMES, RECENT_ATTEMPTS, LogFilter, attempt_record
from service.timefmt import from_epoch, iso_ms

log = structlog.get_logger("service")

REDELIVER_OUTCOMES: tuple[str, ...] = get_args(m.RedeliverOutcome)
# the exact filters of `events` (the API's and the console's query parameters)
EVENT_FILTERS = (
    "endpoint",
    "type",
    "account_id",
    "user_id",
    "assignment_id",
    "completion_id",
    "outcome",
)
TEST_MESSAGE = (
    "A test event sent from lms-webhooks' admin API to this endpoint alone. It is not an "
    "assignment change and is never retried."
)


class DeliveryLogViews(OperationsBase):
    async def events(
        self,
        *,
        endpoint: str | None = None,
        type: str | None = None,
        account_id: str | None = None,
        user_id: str | None = None,
        assignment_id: str | None = None,
        completion_id: str | None = None,
        outcome: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> m.EventPage:
        """Logged events, newest first, each with its outcome and attempts per endpoint. A
        page may hold fewer than `limit` items (even none) with a cursor to go on: one call
        looks at a bounded part of the log."""
        page_limit(limit)
        if endpoint is not None:
            self._endpoint(endpoint)
        if outcome is not None and outcome not in OUTCOMES:
            raise InvalidInput(f"`outcome` must be one of {', '.join(OUTCOMES)}")
        if since_ms is not None and until_ms is not None and since_ms > until_ms:
            raise InvalidInput("`since` is after `until`")
        filters = LogFilter(
            endpoint=endpoint,
            type=type,
            account_id=account_id,
            user_id=user_id,
            assignment_id=assignment_id,
            completion_id=completion_id,
            outcome=outcome,
            since_ms=since_ms,
            until_ms=until_ms,
        )
        items, next_cursor = await self.stores.log.events(filters, limit, cursor)
        return m.EventPage(items=items, next_cursor=next_cursor)

    async def event(self, event_id: str) -> m.Event | None:
        """One logged event: its summary, `body` (as sent, parsed) and `attempts` per
        endpoint (oldest first); None when it is not logged (or no longer)."""
        return await self.stores.log.event(event_id)

    async def endpoint_attempts(self, endpoint_id: str, limit: int = 50) -> list[m.EndpointAttempt]:
        """The endpoint's most recent attempts, newest first, each with its event's id and
        type (the last RECENT_ATTEMPTS are kept)."""
        self._endpoint(endpoint_id)
        return await self.stores.log.endpoint_attempts(
            endpoint_id, page_limit(limit, RECENT_ATTEMPTS)
        )

    async def test_send(self, endpoint_id: str) -> m.TestSend:
        """Send a signed `webhook.test` event to this endpoint alone, now, through the same
        signing, POST and SSRF guard as every delivery; never queued, never retried (whatever
        the endpoint's state), and recorded in the delivery log as delivered or dead."""
        endpoint = self._endpoint(endpoint_id)
        if self.session is None:
            raise InvalidInput("test sends need the running service (its HTTP client)")
        limit = endpoint_rate(endpoint.id, endpoint.max_per_second)
        if limit is not None:  # the endpoint's max_per_second holds for test sends too
            rate = self.stores.limiter.rate(limit)
            while True:  # a permit (Redis' clock: no event to wait for here)
                wait = await rate.try_acquire()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        now = self.clock()
        event_id = "evt_" + secrets.token_hex(16)
        event: TestEvent = {
            "id": event_id,
            "type": TEST,
            "timestamp": iso_ms(from_epoch(now)),
            "data": {"test": True, "endpoint_id": endpoint_id, "message": TEST_MESSAGE},
        }
        body = jsonfmt.dumps_bytes(event)
        poster = Poster(
            endpoint,
            self.session,
            self.clock,
            allow_private=self.settings.delivery.allow_private_addresses,
            deadlines=None,
        )
        attempt = await poster.post(event_id, body)
        result = attempt.result
        delivered = result.verdict is Verdict.SUCCESS
        duration_ms = round(attempt.duration * 1000, 1)
        record = attempt_record(
            attempt=1,
            started_at_ms=int(attempt.started_at * 1000),
            duration_ms=duration_ms,
            status=result.status,
            error=result.error,
            response=attempt.response,
            next_attempt_at_ms=None,
        )
        head = EventHead(TEST, event["timestamp"], None, None, None)
        await self.stores.log.record_sent(
            endpoint_id,
            event_id,
            head,
            body,
            at_ms=int(now * 1000),
            delivered=delivered,
            record=record,
        )
        log.info(
            "test_sent",
            endpoint=endpoint_id,
            event_id=event_id,
            delivered=delivered,
            status=result.status,
            error=result.error,
        )
        return m.TestSend(
            event_id=event_id,
            delivered=delivered,
            status=result.status,
            error=result.error,
            duration_ms=duration_ms,
        )

    async def redeliver(
        self, endpoint_id: str, *, since_ms: int, until_ms: int | None, outcome: str
    ) -> int:
        """Queue the endpoint's logged events of [since, until] (until None: now) again,
        with their ids and bodies as sent, atomically: those delivered, dead-lettered, or
        either (`any`); not those still queued, not test sends. Returns how many."""
        self._endpoint(endpoint_id)
        if outcome not in REDELIVER_OUTCOMES:
            raise InvalidInput(f"`outcome` must be one of {', '.join(REDELIVER_OUTCOMES)}")
        now_ms = int(self.clock() * 1000)
        until = now_ms if until_ms is None else until_ms
        if since_ms > until:
            raise InvalidInput("`since` is after `until`")
        queued = await self.stores.log.redeliver(
            endpoint_id,
            since_ms=since_ms,
            until_ms=until,
            outcome=outcome,
            now_ms=now_ms,
            never=TEST,
        )
        log.info(
            "events_redelivered",
            endpoint=endpoint_id,
            since_ms=since_ms,
            until_ms=until,
            outcome=outcome,
            queued=queued,
        )
        self.wake({endpoint_id})
        return queued
