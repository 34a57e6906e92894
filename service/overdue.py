"""Overdue: due dates watched in Redis, reported once each when they pass, no upstream call.

Polls commit the due dates to watch together with the snapshots. A periodic check claims
the due dates that have passed (leased, like polls, so one process reports each), reads the
snapshot, and commits the `assignment.overdue` events and the unwatch in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog
from redis.exceptions import RedisError

from service.config import Settings
from service.detect import detect_overdue
from service.metrics import Metrics
from service.outbox import RoutedEvents, route_events
from service.store.polls import PollStore
from service.timefmt import from_epoch

log = structlog.get_logger("overdue")

CHECK_SECONDS = 5.0  # due dates are reported within this of passing (well inside a minute)
CLAIM_SECONDS = 30.0  # a claimed check not committed by then (its process died) is claimed again
BATCH = 200


class OverdueWatcher:
    def __init__(
        self,
        store: PollStore,
        settings: Settings,
        metrics: Metrics,
        *,
        on_committed: Callable[[set[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.on_committed = on_committed
        self.clock = clock

    async def check(self) -> int:
        """Report every due date that has passed; returns how many events were queued."""
        try:
            return await self._check()
        except RedisError as e:  # the leases run out; the next check takes them again
            log.warning("overdue_check_failed", error=str(e))
            return 0

    async def _check(self) -> int:
        now = self.clock()
        token, claimed = await self.store.claim_overdue(int(now * 1000), CLAIM_SECONDS, BATCH)
        queued = 0
        for member, (account_id, user_id, assignment_id, due_ms) in claimed:
            snapshot = await self.store.snapshot(account_id, user_id, assignment_id)
            event = None
            if snapshot is not None:
                event = detect_overdue(
                    account_id, user_id, assignment_id, snapshot, due_ms, now=from_epoch(now)
                )
            routed: RoutedEvents = {}
            if event is not None:
                route_events([event], self.settings.endpoints, int(now * 1000), routed)
            if await self.store.commit_overdue(member, token, routed) and event is not None:
                queued += 1
                self.metrics.events.labels(event["type"]).inc()
                log.info(
                    "assignment_overdue",
                    account_id=account_id,
                    user_id=user_id,
                    assignment_id=assignment_id,
                    event_id=event["id"],
                )
                if routed and self.on_committed:
                    self.on_committed(set(routed))
        return queued
