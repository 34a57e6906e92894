"""Overdue: due dates watched in Redis, reported once each when they pass, no upstream call.

Polls commit the due dates to watch together with the snapshots. A periodic check claims
the due dates that have passed (leased, like polls, so one process reports each), reads each
user's snapshots once for all of that user's due dates, and commits the
`assignment.overdue` events and the unwatch of a batch of them in one step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from redis.exceptions import RedisError

from service.changes.detect import Snapshot, detect_overdue
from service.changes.events import Event
from service.changes.outbox import OverdueWatch, RoutedEvents, route_events
from service.config import Settings
from service.metrics import Metrics
from service.store.polls import PollStore
from service.store.redis_health import log_redis_error
from service.timefmt import from_epoch

log = structlog.get_logger("overdue")

CHECK_SECONDS = 5.0  # due dates are reported within this of passing (well inside a minute)
CLAIM_SECONDS = 30.0  # a claimed check not committed by then (its process died) is claimed again
BATCH = 500  # due dates claimed, or committed, in one round trip
# due dates one check claims at most (within its claims' 30 s); the rest wait for the next
CHECK_LIMIT = 20_000


@dataclass(frozen=True, slots=True)
class _Claim:
    """One claimed due date: its overdue member, its claim's token, what it says."""

    member: str
    token: int
    watch: OverdueWatch


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
            log_redis_error(log, "overdue_check_failed", e)
            return 0

    async def _check(self) -> int:
        """Claim first, then read: every user's snapshots are read after its due dates were
        claimed, so they are at least as new as the commit that watched each of them (an
        older read could miss a due date a poll has just watched, and unwatch it unsent). A
        later commit that makes one no longer overdue unwatches it, which fails its claim."""
        now = self.clock()
        by_user: dict[tuple[str, str], list[_Claim]] = {}
        claimed = 0
        while claimed < CHECK_LIMIT:
            token, batch = await self.store.claim_overdue(now, CLAIM_SECONDS, BATCH)
            for member, watch in batch:
                by_user.setdefault(watch[:2], []).append(_Claim(member, token, watch))
            claimed += len(batch)
            if len(batch) < BATCH:
                break
        queued = 0
        for (account_id, user_id), claims in by_user.items():
            snapshots = await self.store.user_snapshots(account_id, user_id)
            for start in range(0, len(claims), BATCH):
                queued += await self._report(claims[start : start + BATCH], snapshots, now)
        return queued

    async def _report(
        self, claims: list[_Claim], snapshots: dict[str, Snapshot], now: float
    ) -> int:
        """Commit one batch of one user's claimed due dates; returns the events queued."""
        reports: list[tuple[_Claim, Event | None, RoutedEvents]] = []
        for claim in claims:
            account_id, user_id, assignment_id, due_ms = claim.watch
            snapshot = snapshots.get(assignment_id)
            event = None
            if snapshot is not None:
                event = detect_overdue(
                    account_id, user_id, assignment_id, snapshot, due_ms, now=from_epoch(now)
                )
            routed: RoutedEvents = {}
            if event is not None:
                route_events(
                    [event], self.settings.endpoints, int(now * 1000), routed, assignment_id
                )
            reports.append((claim, event, routed))
        committed = await self.store.commit_overdue(
            [(claim.member, claim.token, routed) for claim, _, routed in reports]
        )
        queued, endpoints = 0, set()
        for (claim, event, routed), done in zip(reports, committed, strict=True):
            if not done or event is None:
                continue
            queued += 1
            endpoints |= set(routed)
            self.metrics.events.labels(event["type"]).inc()
            log.info(
                "assignment_overdue",
                account_id=claim.watch.account_id,
                user_id=claim.watch.user_id,
                assignment_id=claim.watch.assignment_id,
                event_id=event["id"],
            )
        if endpoints and self.on_committed:
            self.on_committed(endpoints)
        return queued
