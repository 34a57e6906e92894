"""One user's poll: read upstream, detect against the snapshots, commit atomically; each
tracked resource (assignments, then completions) in turn, each with its own snapshots,
watermark and baseline, under one lease."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime

import structlog

from service.changes.detect import (
    Change,
    LatestVersions,
    Snapshot,
    Watermark,
    changed_since_found,
    detect,
    detect_removed,
    updated_after,
)
from service.changes.outbox import Outbox
from service.config import Settings
from service.errors import StaleLease, UpstreamError
from service.metrics import Metrics, report_future_stamps
from service.reading.plan import (
    Cadence,
    ConfiguredCadence,
    assignment_activity,
    change_rate,
    next_due,
    user_weight,
)
from service.reading.unserved import ServedResources
from service.resources import Resource
from service.store.directory import AccountDirectory
from service.store.leases import Lease
from service.store.limits import RateLimit
from service.store.linked_accounts import LinkedAccountStore
from service.store.outcome import EndLease, KeepLease, LeaseOutcome
from service.store.polls import PollStore, StoredUser
from service.store.read_state import ReadState
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("poller")

# Changes held in memory before an intermediate commit; the watermark only moves at the end.
FLUSH_EVERY = 500


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
    resource: Resource
    now: datetime
    emit: bool
    stored: StoredUser
    result: PollResult
    stamps: Watermark  # the newest believable `updated_at` read so far
    outbox: Outbox = field(default_factory=Outbox)
    seen: set[str] = field(default_factory=set)
    now_ms: int = 0
    changes: int = 0  # committed by this read (result counts the whole poll's)
    skipped: int = 0  # records this read could not track

    def __post_init__(self) -> None:
        self.now_ms = int(self.now.timestamp() * 1000)

    @property
    def snapshots(self) -> dict[str, Snapshot]:
        """Every snapshot of the user's resource, as changes are detected (decoded when first
        needed)."""
        return self.stored.snapshots

    def live(self) -> set[str]:
        """Records we know as present (tombstones excluded)."""
        return {a for a, s in self.snapshots.items() if s.record is not None}

    def add(
        self,
        change: Change,
        previous: Snapshot | None,
        settings: Settings,
        *,
        emit: bool | None = None,
    ) -> None:
        self.snapshots[change.record_id] = change.snapshot
        self.outbox.add(
            self.lease.account_id,
            self.lease.user_id,
            change,
            previous,
            now=self.now,
            due_ms=self.now_ms,
            emit=self.emit if emit is None else emit,
            endpoints=settings.endpoints,
        )


class Poller:
    def __init__(
        self,
        store: PollStore,
        client: StackOneClient,
        budget: RateLimit,
        settings: Settings,
        metrics: Metrics,
        *,
        on_committed: Callable[[set[str]], None] | None = None,
        cadence: Cadence | None = None,
        accounts: AccountDirectory | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`accounts`: which accounts are read, and what of their users (the config's
        alone when not given)."""
        self.store = store
        self.accounts = accounts or AccountDirectory(LinkedAccountStore(store.redis), settings)
        self.client = client
        self.budget = budget  # the client's: the first request's permit comes with the load
        self.settings = settings
        self.metrics = metrics
        self.on_committed = on_committed
        self.cadence = cadence or ConfiguredCadence.of(settings.polling)
        self.clock = clock
        self.served = ServedResources(store.redis, metrics, clock)

    async def poll(self, lease: Lease) -> PollResult:
        """Poll one user; raises UpstreamError (nothing committed past the last flush).

        Each resource's read commits its own snapshots and state; the last one's commit ends
        the lease, the others' keep it. A read that fails leaves the resources read before
        it committed, and its own as it was."""
        started = self.clock()
        result = PollResult()
        resources = await self.served.of(
            lease.account_id, await self.accounts.resources(lease.account_id)
        )
        weight: float | None = None  # the user's, from its assignments (`adaptive`)
        for n, resource in enumerate(resources):
            last = n == len(resources) - 1
            try:
                weight = await self._poll(lease, resource, started, result, weight, last=last)
            except UpstreamError as e:
                raise await self.served.failed(lease, resources, n, e) or e from e
        return result

    async def _poll(
        self,
        lease: Lease,
        resource: Resource,
        started: float,
        result: PollResult,
        weight: float | None,
        *,
        last: bool,
    ) -> float | None:
        """One resource's read of the poll; returns the user's weight (`adaptive`), this
        read's or `weight` as it was."""
        polling = self.settings.polling
        stored = await self.store.load_user(lease.account_id, lease.user_id, self.budget, resource)
        if stored.permit_granted:
            self.client.keep_permit()
        state = stored.state
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        full = watermark is None or state.complete_read_due(
            started, self.cadence.full_resync_interval
        )
        result.full |= full
        run = _Run(
            lease=lease,
            resource=resource,
            now=from_epoch(started),
            emit=bool(state.baselined) or polling.emit_on_first_sync,
            stored=stored,
            result=result,
            stamps=Watermark(watermark),
        )
        await self._read(run, None if full else updated_after(watermark, polling.overlap))
        # Only reached when every page was read without error; a skipped record may be one
        # we know, so a read that skipped any cannot tell what was removed.
        if full and not run.skipped:
            missing = run.live() - run.seen
            if missing:
                # Offset paging shifts when records are deleted during a read, so one read
                # can skip a record that still exists: only a second complete read confirms.
                run.seen = set()
                await self._read(run, None)
                missing &= run.live() - run.seen
            for record_id in sorted(missing):
                previous = run.snapshots[record_id]
                gone = detect_removed(
                    lease.account_id,
                    lease.user_id,
                    record_id,
                    previous,
                    now=run.now,
                    emit=run.emit,
                    resource=resource,
                )
                run.add(gone, previous, self.settings)
        report_future_stamps(
            self.metrics,
            resource.name,
            run.stamps,
            account_id=lease.account_id,
            user_id=lease.user_id,
        )
        now_ms = run.now_ms
        # the user's activity is that of its assignments (in progress, due dates)
        adaptive = polling.adaptive and resource.detailed
        activity = ReadState()
        if adaptive:
            activity, weight = self._activity(run, state)
        read = ReadState.after_read(run.stamps.newest, now_ms, full=full)
        if not last:  # the poll's outcome (last poll, failures) is written by its last read
            read = replace(read, last_poll_ms=None, failures=None, last_error=None)
        done = replace(
            read,
            baselined=True,
            change_rate=activity.change_rate,
            in_progress=activity.in_progress,
            next_due_date_ms=activity.next_due_date_ms,
        )
        await self._commit(run, done, weight, last=last)
        return weight

    def _activity(self, run: _Run, state: ReadState) -> tuple[ReadState, float]:
        """The user's activity after this poll, and the weight of its polls (`adaptive`).
        Its assignments are looked at again only when this poll decoded them anyway."""
        changes = run.changes + len(run.outbox.changes) if run.emit else 0
        rate = change_rate(
            state.change_rate,
            state.last_poll_ms,
            changes,
            run.now_ms,
            self.cadence.per_user_interval,  # the plan's: stretched when the budget is short
        )
        if run.stored.decoded:
            records = (s.record for s in run.snapshots.values())
            in_progress, next_due_date = assignment_activity(records)
        else:
            in_progress, next_due_date = bool(state.in_progress), state.next_due_date_ms or None
        weight = user_weight(rate, in_progress, next_due_date, run.now_ms)
        return ReadState(
            change_rate=rate, in_progress=in_progress, next_due_date_ms=next_due_date or 0
        ), weight

    async def _read(self, run: _Run, since: datetime | None) -> None:
        """Read every page, then detect each assignment once, flushing the outbox when it
        grows large.

        A read may list an id twice (in one page or across pages); detecting both versions
        made every poll see two changes, forever. One version is kept per read: the one
        updated last, on a tie the one listed last. So every read agrees, incremental or
        full: a filtered read that returns either version returns the latest one too.
        """
        lease, resource = run.lease, run.resource
        latest: LatestVersions[str] = LatestVersions()
        async for page in self.client.pages(lease.account_id, lease.user_id, since, resource):
            run.result.pages += 1
            run.result.records += len(page.records)
            run.stamps.see((r.get("updated_at") for r in page.records), page.served_at or run.now)
            if page.skipped:
                self._skipped(lease, page.skipped)
                run.skipped += sum(page.skipped.values())
                run.result.skipped += sum(page.skipped.values())
            for record in page.records:
                latest.add(str(record["id"]), record)
        if latest.duplicates:
            # counted, not in result.skipped: the id was read, so removals can still be told
            self._skipped(lease, {"duplicate_id": latest.duplicates})
        for record_id, record in latest.take().items():
            run.seen.add(record_id)
            previous = run.snapshots.get(record_id)
            emit = run.emit or changed_since_found(record, run.stored.state.found_ms)
            change = detect(
                lease.account_id,
                lease.user_id,
                record_id,
                previous,
                record,
                now=run.now,
                emit=emit,
                resource=resource,
            )
            if change is not None:
                run.add(change, previous, self.settings, emit=emit)
            if len(run.outbox) >= FLUSH_EVERY:
                await self._commit(run, None)
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

    def next_due(self, lease: Lease, weight: float | None = None) -> float:
        interval = self.cadence.user_interval(weight)
        return next_due(lease.due_at, lease.claimed_at, interval, self.clock())

    async def _commit(
        self,
        run: _Run,
        done: ReadState | None,
        weight: float | None = None,
        *,
        last: bool = False,
    ) -> None:
        """Commit the outbox, fenced by the lease. `done`: the read's final state; the poll's
        `last` read's ends the lease (the user is next due an interval on); None: an
        intermediate flush, which extends it, as a read before the last does."""
        lease, outbox, result = run.lease, run.outbox, run.result
        async with lease.lock:
            # a flush keeps the lease (on Redis' clock); the last commit ends it
            ends = done is not None and last
            outcome: LeaseOutcome = EndLease(self.next_due(lease, weight)) if ends else KeepLease()
            token = await self.store.commit(
                lease.account_id,
                lease.user_id,
                outbox,
                token=lease.token,
                outcome=outcome,
                state=done,
                # all of them: they are stored as one value (written at once when they were
                # still in 0.1's form, which the commit then removes)
                snapshots=run.snapshots if outbox.changes or run.stored.legacy else None,
                weight=weight,
                resource=run.resource,
                answered=ends,
            )
            if token is None:
                raise StaleLease(f"lease on {lease.member} was taken over")
            lease.token = token
            lease.ended = ends
        result.changes += len(outbox.changes)
        run.changes += len(outbox.changes)
        detected = Counter(event["type"] for change in outbox.changes for event in change.events)
        for kind, count in detected.items():
            result.events += count
            self.metrics.events.labels(kind).inc(count)
        if outbox.events and self.on_committed:
            self.on_committed(set(outbox.events))
