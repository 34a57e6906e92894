"""One account's change feed read: every assignment of the account updated since the feed's
watermark (`GET /unified/lms/assignments`), each record routed by its `user_id` to that
user's snapshots and detected exactly as the user's own poll would (same events, ids and
sequences), committed atomically with the feed's watermark.

A user the feed has not baselined yet (new in the config, listed, added at run time) is
first read completely on its own; a full read of the account (the first, then one every
`full_resync_interval`) baselines every user at once and finds removals (feed_users.py).
`strategy: auto` falls back to per-user polling where the upstream cannot serve the feed.

An account tracking completions has a second feed (`GET /unified/lms/completions`), read
right after the first under the same lease, with its own watermark and full reads; each
feed commits on its own, and the last one's commit ends the lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import structlog

from service.changes.detect import FeedWindow, updated_after
from service.changes.outbox import Outbox
from service.config import AccountSettings, Settings
from service.errors import StaleLease, UpstreamError
from service.metrics import Metrics, report_future_stamps
from service.reading.feed_run import KEEP_LOADED, FeedResult, FeedRun, count_skipped
from service.reading.feed_users import CompleteUserReads
from service.reading.plan import Cadence, ConfiguredCadence, activity_weight, change_rate, next_due
from service.reading.unserved import ServedResources
from service.resources import Resource
from service.store.feeds import FeedFallback, FeedStore
from service.store.leases import Lease
from service.store.outcome import EndLease, KeepLease, LeaseOutcome
from service.store.read_state import ReadState
from service.store.scripts import TrackedUsersChanged
from service.store.users import TrackedUsers
from service.timefmt import from_epoch, parse_iso
from service.upstream.client import NOT_IMPLEMENTED, StackOneClient
from service.upstream.model import Page

log = structlog.get_logger("feed")

FLUSH_EVERY = 500  # changes held before an intermediate commit (the watermark waits)
# records held (one version per assignment) before they are detected: a duplicate listed
# further apart than this in one read is caught by FeedRun.detect's version check instead
SETTLE_EVERY = 5000
FILTER_TOLERANCE = timedelta(seconds=1)  # a provider may round the bound it was given
RETRACK_TRIES = 3  # commits of one flush while users keep being added or removed
LISTING_WAIT = 1.0  # a `users: all` account's feed waits at most this for its first listing


@dataclass(frozen=True, slots=True)
class _Read:
    """What a feed read of one resource starts from (the same for each resource)."""

    resource: Resource
    started: float
    tracked: set[str]
    users_version: str | None  # the tracked users' version `tracked` is of
    ends_fallback: bool  # the read ends a `strategy: auto` fallback: it asks for the filter


class FeedUnsupported(UpstreamError):
    """The upstream cannot serve this account's change feed (`strategy: auto` falls back)."""


def fallback_reason(error: UpstreamError) -> str | None:
    """Why `strategy: auto` falls back to per-user polling after this error, or None."""
    if isinstance(error, FeedUnsupported):
        return "filter_ignored"
    if error.status in (404, NOT_IMPLEMENTED):
        return f"status_{error.status}"
    return None


class FeedReader:
    def __init__(
        self,
        store: FeedStore,
        users: TrackedUsers,
        client: StackOneClient,
        settings: Settings,
        metrics: Metrics,
        *,
        on_committed: Callable[[set[str]], None] | None = None,
        on_fallback: Callable[[], None] | None = None,
        cadence: Cadence | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cadence = cadence or ConfiguredCadence.of(settings.polling)
        self.store = store
        self.users = users
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.on_committed = on_committed
        self.on_fallback = on_fallback  # the account's users are to be polled one by one
        self.clock = clock
        self.complete_reads = CompleteUserReads(store, client, metrics, clock=clock)
        self.served = ServedResources(store.redis, metrics, clock)

    async def poll(self, lease: Lease) -> FeedResult:
        """Read the account's feed once; raises UpstreamError (nothing committed past the
        last flush; the watermark has not moved)."""
        account = await self.users.accounts.account(lease.account_id)
        started = self.clock()
        fallback = (await self.users.fallbacks()).get(lease.account_id)
        if fallback is not None and fallback.retry_at > started:
            return await self._wait(lease, fallback.retry_at)
        if account is not None and account.all_users:
            listing = await self.store.listing_state(lease.account_id)
            if listing.last_full_sync_ms is None:  # baselining before it would miss users
                wait = min(LISTING_WAIT, self.settings.polling.account_interval)
                return await self._wait(lease, started + wait)
        # the version first: a user removed while its members are read moves it, so the
        # commit finds out
        users_version = await self.store.users_version()
        tracked = await self.users.of_account(lease.account_id)
        if fallback is not None:
            await self._end_fallback(lease.account_id, tracked)
        result = FeedResult()
        resources = await self.served.of(
            lease.account_id, await self.users.accounts.resources(lease.account_id)
        )
        for n, resource in enumerate(resources):
            read = _Read(resource, started, tracked, users_version, fallback is not None)
            try:
                # only the first resource's failure can say the feed does not apply (`auto`)
                first = account if n == 0 else None
                await self._poll(lease, first, read, result, last=n == len(resources) - 1)
            except UpstreamError as e:
                raise await self.served.failed(lease, resources, n, e) or e from e
        return result

    async def _poll(
        self,
        lease: Lease,
        account: AccountSettings | None,
        read: _Read,
        result: FeedResult,
        *,
        last: bool,
    ) -> None:
        """One resource's feed read; the `last` one's commit ends the lease."""
        resource, started, tracked = read.resource, read.started, read.tracked
        state = await self.store.feed_state(lease.account_id, resource)
        polling = self.settings.polling
        # a read that ends a fallback asks for the filter, if it can: it must show again
        # whether the upstream applies it (a full read cannot tell)
        full = state.watermark_ms is None or (
            not read.ends_fallback
            and (
                state.complete_read_due(started, self.cadence.full_resync_interval)
                or await self.complete_reads.many_new(lease.account_id, tracked, resource)
            )
        )
        result.full |= full
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        anchor = from_epoch(state.anchor_ms / 1000) if state.anchor_ms else None
        run = FeedRun(
            lease,
            self.store,
            self.settings.endpoints,
            resource=resource,
            full=full,
            tracked=tracked,
            users_version=read.users_version,
            now=from_epoch(started),
            window=FeedWindow(watermark, anchor),
            emit_on_first_sync=polling.emit_on_first_sync,
            result=result,
            state=state,
        )
        try:
            await self._read(
                run, account, None if full else updated_after(watermark, polling.overlap)
            )
            if full:
                await self.complete_reads.finish_full_read(run)
            else:
                await self.complete_reads.baseline_new(run)
        except UpstreamError:
            self.metrics.feed_reads.labels("error").inc()
            raise
        report_future_stamps(self.metrics, resource.name, run.stamps, account_id=lease.account_id)
        done = run.final_state()
        if not last:  # the read's outcome (last read, failures) is written by its last feed
            done = replace(done, last_poll_ms=None, failures=None, last_error=None)
        await self._commit(run, done, last=last)
        if full:
            self.complete_reads.all_baselined(run)
        self.metrics.feed_reads.labels("full" if full else "ok").inc()
        duplicates = run.duplicates + run.latest.duplicates
        if duplicates:  # not result.skipped: the id was read, removals still hold
            self.metrics.records_skipped.labels("duplicate_id").inc(duplicates)

    async def _read(
        self, run: FeedRun, account: AccountSettings | None, since: datetime | None
    ) -> None:
        auto = account is not None and account.strategy == "auto"
        try:
            async for page in self.client.account_pages(run.account_id, since, run.resource):
                # only `auto` has somewhere to go: `account` reads on, at a full read's cost
                await self._page(run, page, since if auto else None)
        except UpstreamError as e:
            reason = fallback_reason(e) if auto else None
            if reason is not None:
                await self._fall_back(run.lease, reason, e)
            raise
        await self._settle(run)

    async def _page(self, run: FeedRun, page: Page, asked_after: datetime | None) -> None:
        """One page of the feed; `asked_after`: the bound to hold the records to."""
        run.answered(page)
        if asked_after is not None and _ignores_filter(page, asked_after):
            raise FeedUnsupported("the account endpoint ignores filter[updated_after]")
        skipped = dict(page.skipped)
        for record in page.records:
            user_id = record.get("user_id")
            if not isinstance(user_id, str) or not user_id:
                skipped["missing_user_id"] = skipped.get("missing_user_id", 0) + 1
            elif user_id in run.tracked:
                run.latest.add((user_id, str(record["id"])), record)
            else:
                run.result.untracked += 1
        count_skipped(self.metrics, run, skipped)
        if len(run.latest) >= SETTLE_EVERY:
            await self._settle(run)

    async def _settle(self, run: FeedRun) -> None:
        """Detect the versions held so far (one per assignment), and commit once enough
        changes wait or enough users are in memory."""
        await run.detect_latest()
        if len(run.outbox) >= FLUSH_EVERY or run.loaded >= KEEP_LOADED:
            await self._commit(run, None)

    async def _commit(self, run: FeedRun, done: ReadState | None, *, last: bool = False) -> None:
        """Commit what the read found, fenced by the feed's lease. `done`: the read's final
        state; the `last` feed's ends the lease (the account is due an interval on); None: a
        flush (extends it), as a feed before the last does."""
        lease, final = run.lease, done is not None
        ends = final and last
        async with lease.lock:
            outcome: LeaseOutcome = KeepLease()  # a flush keeps the lease (on Redis' clock)
            if ends and done is not None:
                done, interval = self._paced(run, done)
                outcome = EndLease(next_due(lease.due_at, lease.claimed_at, interval, self.clock()))
            token = await self._commit_tracked(run, outcome, done, final)
            if token is None:
                raise StaleLease(f"feed lease on {lease.account_id} was taken over")
            lease.token = token
            lease.ended = ends
        outbox = run.committed(final)
        run.result.changes += len(outbox.changes)
        for change in outbox.changes:
            run.result.found += bool(change.events)
            for event in change.events:
                run.result.events += 1
                self.metrics.events.labels(event["type"]).inc()
        if outbox.events and self.on_committed:
            self.on_committed(set(outbox.events))

    def _paced(self, run: FeedRun, done: ReadState) -> tuple[ReadState, float]:
        """The feed's next interval; with `adaptive`, by its activity, kept in its state for
        the plan: a read that found changes has the next one come soon (HR departments
        assign training in bursts), a quiet feed waits longer the longer it stays quiet."""
        if not self.settings.polling.adaptive:
            return done, self.cadence.feed_interval
        found = run.result.found + sum(bool(change.events) for change in run.outbox.changes)
        before = run.state
        rate = change_rate(
            before.change_rate, before.last_poll_ms, found, run.now_ms, self.cadence.feed_interval
        )
        busy = found > 0
        interval = self.cadence.account_feed_interval(activity_weight(rate), busy)
        self.cadence.feed_paced(run.account_id, interval)
        return replace(done, change_rate=rate, busy=busy), interval

    async def _commit_tracked(
        self, run: FeedRun, outcome: LeaseOutcome, done: ReadState | None, final: bool
    ) -> int | None:
        """The commit, written only for users still tracked: a user removed during the read
        (by a listing, or at run time) must not get its snapshots and state back."""
        for _ in range(RETRACK_TRIES):
            try:
                return await self.store.commit(
                    run.account_id,
                    run.outbox,
                    token=run.lease.token,
                    outcome=outcome,
                    state=done,
                    users_version=run.users_version,
                    users=run.writes(final),
                    resource=run.resource,
                    # the read's last commit: it succeeded (a read that only waited
                    # commits in _wait, and proves nothing of the account)
                    answered=isinstance(outcome, EndLease),
                )
            except TrackedUsersChanged:
                version = await self.store.users_version()
                run.retrack(await self.users.of_account(run.account_id), version)
        raise TrackedUsersChanged(run.account_id)

    async def _wait(self, lease: Lease, until: float) -> FeedResult:
        """Not read now: due again at `until`."""
        async with lease.lock:
            if (
                await self.store.commit(
                    lease.account_id,
                    Outbox(),
                    token=lease.token,
                    outcome=EndLease(until),
                    state=None,
                    users_version=None,
                    users=[],
                )
                is None
            ):
                raise StaleLease(f"feed lease on {lease.account_id} was taken over")
            lease.ended = True
        return FeedResult()

    async def _end_fallback(self, account_id: str, tracked: set[str]) -> None:
        """The feed is tried again: the account's users stop being polled one by one first
        (a poll still running finds its lease gone and commits nothing), so the feed and
        per-user polls never write the same users' snapshots at once."""
        await self.store.end_fallback(account_id, tracked)
        log.info("feed_fallback_ended", account_id=account_id)
        if self.on_fallback is not None:
            self.on_fallback()

    async def _fall_back(self, lease: Lease, reason: str, error: UpstreamError) -> None:
        """Poll the account's users one by one until `full_resync_interval` has passed, then
        try the feed again. Fenced by the read's lease: a fallback of an account forgotten
        meanwhile would never expire, nor be cleared."""
        account_id, now = lease.account_id, self.clock()
        retry_at = now + self.cadence.full_resync_interval
        async with lease.lock:  # its token does not move meanwhile
            fallback = FeedFallback(reason, now, retry_at)
            if not await self.store.fall_back(account_id, fallback, lease.held):
                return  # taken over (that read falls back), or forgotten
        self.metrics.feed_fallbacks.labels(reason).inc()
        log.warning(
            "feed_fallback",
            account_id=account_id,
            reason=reason,
            error=str(error),
            retry_feed_at=from_epoch(retry_at).isoformat(),
        )
        if self.on_fallback is not None:
            self.on_fallback()


def _ignores_filter(page: Page, since: datetime) -> bool:
    """A record updated before the instant asked for: the upstream does not apply
    `filter[updated_after]` (whether the bound is inclusive is not known: equal is fine,
    and so is a second less: a provider may round the bound)."""
    earliest = since - FILTER_TOLERANCE
    for record in page.records:
        moment = parse_iso(record.get("updated_at"))
        if moment is not None and moment < earliest:
            return True
    return False
