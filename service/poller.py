"""One user's poll: read upstream, detect against the snapshots, commit atomically."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial

import structlog

from service import jsonfmt
from service.config import EndpointSettings, Settings
from service.detect import (
    Change,
    Snapshot,
    detect,
    detect_removed,
    next_watermark,
    overdue_watch,
    updated_after,
)
from service.errors import StaleLease
from service.events import Event
from service.metrics import Metrics
from service.store import keys
from service.store.polls import Outbox, PollStore, RoutedEvents, UserState
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("poller")

# Changes held in memory before an intermediate commit; the watermark only moves at the end.
FLUSH_EVERY = 500


@dataclass
class Lease:
    """A claimed user. `token` (the lease expiry, ms) changes whenever the lease is extended."""

    member: str
    account_id: str
    user_id: str
    token: int
    due_at: float  # when it was due (s): the next poll is due an interval later
    claimed_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class PollResult:
    full: bool = False
    pages: int = 0
    records: int = 0
    changes: int = 0
    events: int = 0
    skipped: int = 0


@dataclass(slots=True)
class _Run:
    """One poll in progress."""

    lease: Lease
    now: datetime
    emit: bool
    state: UserState
    result: PollResult
    outbox: Outbox = field(default_factory=Outbox)
    seen: set[str] = field(default_factory=set)
    updated_values: list[object] = field(default_factory=list)
    now_ms: int = 0

    def __post_init__(self) -> None:
        self.now_ms = int(self.now.timestamp() * 1000)

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        """Every snapshot of the user, as changes are detected (decoded when first needed)."""
        return self.state.snapshots

    def live(self) -> set[str]:
        """Assignments we know as present (tombstones excluded)."""
        return {a for a, s in self.snapshots.items() if s.record is not None}


def next_due(due_at: float, claimed_at: float, interval: float, now: float) -> float:
    """An interval after the poll was due, not after it was claimed or ended: claims lag by up
    to a tick and polls take time, and either would stretch every interval. A poll claimed an
    interval or more late (a backlog, or `poll now`, which makes a user due at 0) starts the
    cadence again from its claim instead of being due again at once."""
    on_cadence = due_at + interval
    return on_cadence if on_cadence > now else max(claimed_at + interval, now)


def route_events(
    events: Iterable[Event],
    endpoints: Iterable[EndpointSettings],
    due_ms: int,
    into: RoutedEvents,
) -> None:
    """Queue each event for every endpoint that wants it (the body serialized once)."""
    for event in events:
        body: bytes | None = None  # bytes all the way to Redis: no decode and encode again
        for endpoint in endpoints:
            if endpoint.wants(event["type"], event["data"]["account_id"]):
                body = body or jsonfmt.dumps_bytes(event)
                into.setdefault(endpoint.id, []).append((event["id"], body, due_ms))


def add_change(run: _Run, change: Change, previous: Snapshot | None, settings: Settings) -> None:
    """A change joins the outbox: its snapshot, its events, and its overdue watch."""
    outbox, lease = run.outbox, run.lease
    run.snapshots[change.assignment_id] = change.snapshot
    outbox.changes.append(change)
    route_events(change.events, settings.endpoints, run.now_ms, outbox.events)
    stop, start = overdue_watch(previous, change.snapshot, run.now, run.emit)
    member = partial(keys.overdue_member, lease.account_id, lease.user_id, change.assignment_id)
    if stop is not None:
        outbox.unwatch.append(member(stop))
    if start is not None:
        outbox.watch[member(start)] = start


class Poller:
    def __init__(
        self,
        store: PollStore,
        client: StackOneClient,
        settings: Settings,
        metrics: Metrics,
        *,
        lease_seconds: float,
        on_committed: Callable[[set[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.on_committed = on_committed
        self.clock = clock

    async def poll(self, lease: Lease) -> PollResult:
        """Poll one user; raises UpstreamError (nothing committed past the last flush)."""
        polling = self.settings.polling
        started = self.clock()
        state = await self.store.load_user(lease.account_id, lease.user_id, self.client.budget)
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        last_full = state.last_full_sync_ms
        full = (
            watermark is None
            or last_full is None
            or started - last_full / 1000 >= polling.full_resync_interval
        )
        run = _Run(
            lease=lease,
            now=from_epoch(started),
            emit=state.baselined or polling.emit_on_first_sync,
            state=state,
            result=PollResult(full=full),
        )
        # the permit for the first request came with the state, one round trip for both
        permitted = state.permit_wait <= 0
        since = None if full else updated_after(watermark, polling.overlap)
        await self._read(run, since, permitted=permitted)
        # Only reached when every page was read without error; a skipped record may be one
        # we know, so a read that skipped any cannot tell what was removed.
        if full and not run.result.skipped:
            missing = run.live() - run.seen
            if missing:
                # Offset paging shifts when records are deleted during a read, so one read
                # can skip a record that still exists: only a second complete read confirms.
                run.seen = set()
                await self._read(run, None)
                missing &= run.live() - run.seen
            for assignment_id in sorted(missing):
                previous = run.snapshots[assignment_id]
                gone = detect_removed(
                    lease.account_id,
                    lease.user_id,
                    assignment_id,
                    previous,
                    now=run.now,
                    emit=run.emit,
                )
                add_change(run, gone, previous, self.settings)
        new_watermark = next_watermark(watermark, run.updated_values, poll_started=run.now)
        final_state = {
            "baselined": "1",
            "failures": "0",
            "last_error": "",
            "last_poll": str(run.now_ms),
        }
        if new_watermark is not None:
            final_state["watermark"] = str(int(new_watermark.timestamp() * 1000))
        if full:
            final_state["last_full_sync"] = str(run.now_ms)
        await self._commit(run, final_state=final_state)
        return run.result

    async def _read(self, run: _Run, since: datetime | None, *, permitted: bool = False) -> None:
        """Read every page, detect each record, flush the outbox when it grows large."""
        lease = run.lease
        pages = self.client.pages(lease.account_id, lease.user_id, since, permitted=permitted)
        async for page in pages:
            run.result.pages += 1
            run.result.records += len(page.records)
            if page.skipped:
                self._skipped(lease, page.skipped)
                run.result.skipped += sum(page.skipped.values())
            for record in page.records:
                assignment_id = str(record["id"])
                run.seen.add(assignment_id)
                run.updated_values.append(record.get("updated_at"))
                previous = run.snapshots.get(assignment_id)
                change = detect(
                    lease.account_id,
                    lease.user_id,
                    assignment_id,
                    previous,
                    record,
                    now=run.now,
                    emit=run.emit,
                )
                if change is not None:
                    add_change(run, change, previous, self.settings)
            if len(run.outbox) >= FLUSH_EVERY:
                await self._commit(run, final_state=None)
                run.outbox = Outbox()

    def _skipped(self, lease: Lease, skipped: dict[str, int]) -> None:
        for reason, count in skipped.items():
            self.metrics.records_skipped.labels(reason).inc(count)
            log.warning(
                "records_skipped",
                account_id=lease.account_id,
                user_id=lease.user_id,
                reason=reason,
                count=count,
            )

    def next_due_ms(self, lease: Lease) -> int:
        interval = self.settings.polling.interval
        return int(next_due(lease.due_at, lease.claimed_at, interval, self.clock()) * 1000)

    async def _commit(self, run: _Run, final_state: dict[str, str] | None) -> None:
        lease, outbox, result = run.lease, run.outbox, run.result
        async with lease.lock:
            if final_state is None:  # intermediate: keep the lease, extended
                next_score = int((self.clock() + self.lease_seconds) * 1000)
            else:
                next_score = self.next_due_ms(lease)
            committed = await self.store.commit(
                lease.account_id,
                lease.user_id,
                outbox,
                token=lease.token,
                next_score=next_score,
                state=final_state,
                # all of them: they are stored as one value (written at once when they were
                # still in 0.1's form, which the commit then removes)
                snapshots=run.snapshots if outbox.changes or run.state.legacy else None,
            )
            if not committed:
                raise StaleLease(f"lease on {lease.member} was taken over")
            lease.token = next_score
        result.changes += len(outbox.changes)
        detected = Counter(event["type"] for change in outbox.changes for event in change.events)
        for kind, count in detected.items():
            result.events += count
            self.metrics.events.labels(kind).inc(count)
        if outbox.events and self.on_committed:
            self.on_committed(set(outbox.events))
