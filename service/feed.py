"""One account's change feed read: every assignment of the account updated since the feed's
watermark (`GET /unified/lms/assignments`), each record routed by its `user_id` to that
user's snapshots and detected exactly as the user's own poll would (same events, ids and
sequences), committed atomically with the feed's watermark.

A user the feed has not baselined yet (new in the config, listed, added at run time) is
first read completely on its own; a full read of the account (the first, then one every
`full_resync_interval`) baselines every user at once and finds removals, each confirmed by
a second complete read of that user, as per-user polling does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from service.config import Settings
from service.detect import (
    Change,
    Snapshot,
    detect,
    detect_removed,
    next_watermark,
    updated_after,
)
from service.errors import StaleLease, UpstreamError, UpstreamRejected
from service.metrics import Metrics
from service.outbox import Outbox
from service.poller import next_due
from service.store.feeds import FeedFallback, FeedStore
from service.store.leases import LEASE_SECONDS, Lease
from service.store.polls import StoredUser
from service.store.read_state import ReadState
from service.store.scripts import UserWrite
from service.store.users import TrackedUsers
from service.timefmt import from_epoch, parse_iso
from service.upstream.client import NOT_IMPLEMENTED, StackOneClient
from service.upstream.model import Page

log = structlog.get_logger("feed")

FLUSH_EVERY = 500  # changes held before an intermediate commit (the watermark waits)
KEEP_LOADED = 2000  # users whose snapshots stay in memory during a long read
BASELINE_BATCH = 25  # new users baselined per read, each by a complete read of its own
LISTING_WAIT = 1.0  # a `users: all` account's feed waits at most this for its first listing


class FeedUnsupported(UpstreamError):
    """The upstream cannot serve this account's change feed (`strategy: auto` falls back)."""


@dataclass(slots=True)
class FeedResult:
    full: bool = False
    pages: int = 0
    records: int = 0
    changes: int = 0
    events: int = 0
    skipped: int = 0  # records that cannot be tracked (no id, no user_id, invalid)
    untracked: int = 0  # records of users not tracked
    baselined: int = 0  # users baselined by a complete read of their own
    waited: bool = False  # not read: waiting for a fallback's end or the first listing


@dataclass(slots=True)
class _User:
    """One user met by a read. `stored` is dropped after a commit when many are loaded
    (its snapshots are in Redis) and loaded again if the user comes back."""

    stored: StoredUser | None
    emit: bool
    was_baselined: bool
    live_before: frozenset[str]  # assignments present before this read (removal candidates)
    seen: set[str] = field(default_factory=set)
    dirty: bool = False
    complete: bool = False  # read completely by this run: baselined once it commits

    @property
    def to_baseline(self) -> bool:
        return self.complete and not self.was_baselined


@dataclass(slots=True)
class _Run:
    lease: Lease
    full: bool
    tracked: set[str]
    now: datetime
    result: FeedResult
    outbox: Outbox = field(default_factory=Outbox)
    users: dict[str, _User] = field(default_factory=dict)
    ignored: set[str] = field(default_factory=set)  # tracked, but not baselined yet
    updated_values: list[object] = field(default_factory=list)
    loaded: int = 0  # users in `users` whose snapshots are in memory

    @property
    def account_id(self) -> str:
        return self.lease.account_id

    @property
    def now_ms(self) -> int:
        return int(self.now.timestamp() * 1000)


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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.users = users
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.on_committed = on_committed
        self.on_fallback = on_fallback  # the account's users are to be polled one by one
        self.clock = clock
        self._baselined: dict[str, set[str]] = {}  # per account: users known baselined

    async def poll(self, lease: Lease) -> FeedResult:
        """Read the account's feed once; raises UpstreamError (nothing committed past the
        last flush; the watermark has not moved)."""
        account = self.settings.account(lease.account_id)
        started = self.clock()
        fallback = (await self.store.fallbacks()).get(lease.account_id)
        if fallback is not None and fallback.retry_at > started:
            return await self._wait(lease, fallback.retry_at)
        if account is not None and account.all_users:
            listing = await self.store.listing_state(lease.account_id)
            if listing.last_full_sync_ms is None:  # baselining before it would miss users
                wait = min(LISTING_WAIT, self.settings.polling.account_interval)
                return await self._wait(lease, started + wait)
        state = await self.store.feed_state(lease.account_id)
        polling = self.settings.polling
        full = (
            state.watermark_ms is None
            or state.last_full_sync_ms is None
            or started - state.last_full_sync_ms / 1000 >= polling.full_resync_interval
        )
        tracked = await self.users.of_account(lease.account_id)
        run = _Run(lease, full, tracked, from_epoch(started), FeedResult(full=full))
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        if not full:
            await self._baseline_new(run)
        since = None if full else updated_after(watermark, polling.overlap)
        auto = account is not None and account.strategy == "auto"
        try:
            async for page in self.client.account_pages(lease.account_id, since):
                # only `auto` has somewhere to go: `account` reads on, at a full read's cost
                await self._page(run, page, since if auto else None)
        except UpstreamError as e:
            await self._unusable(lease, auto, e)
            raise
        if full:
            await self._finish_full_read(run)
        new_watermark = next_watermark(watermark, run.updated_values, poll_started=run.now)
        done = ReadState(
            watermark_ms=None if new_watermark is None else int(new_watermark.timestamp() * 1000),
            last_full_sync_ms=run.now_ms if full else None,
            last_poll_ms=run.now_ms,
            failures=0,
            last_error="",
        )
        await self._commit(run, done, end_fallback=fallback is not None)
        self.metrics.feed_reads.labels("full" if full else "ok").inc()
        return run.result

    # -- reading --

    async def _page(self, run: _Run, page: Page, asked_after: datetime | None) -> None:
        """One page of the feed; `asked_after`: the bound to hold the records to."""
        run.result.pages += 1
        run.result.records += len(page.records)
        skipped = dict(page.skipped)
        if asked_after is not None and _ignores_filter(page, asked_after):
            raise FeedUnsupported("the account endpoint ignores filter[updated_after]")
        records = []
        for record in page.records:
            run.updated_values.append(record.get("updated_at"))
            user_id = record.get("user_id")
            if isinstance(user_id, str) and user_id:
                records.append((user_id, record))
            else:
                skipped["missing_user_id"] = skipped.get("missing_user_id", 0) + 1
        self._skipped(run, skipped)
        await self._load(run, {u for u, _ in records})
        for user_id, record in records:
            if user_id in run.users:
                self._detect(run, user_id, record)
            else:
                run.result.untracked += user_id not in run.tracked
        if len(run.outbox) >= FLUSH_EVERY or run.loaded >= KEEP_LOADED:
            await self._commit(run, None)

    def _detect(self, run: _Run, user_id: str, record: dict[str, object]) -> None:
        user = run.users[user_id]
        assert user.stored is not None
        assignment_id = str(record["id"])
        user.seen.add(assignment_id)
        previous = user.stored.snapshots.get(assignment_id)
        change = detect(
            run.account_id, user_id, assignment_id, previous, record, now=run.now, emit=user.emit
        )
        if change is not None:
            self._add(run, user_id, change.assignment_id, change, previous)

    def _add(
        self,
        run: _Run,
        user_id: str,
        assignment_id: str,
        change: Change,
        previous: Snapshot | None,
    ) -> None:
        user = run.users[user_id]
        assert user.stored is not None
        user.stored.snapshots[assignment_id] = change.snapshot
        user.dirty = True
        run.outbox.add(
            run.account_id,
            user_id,
            change,
            previous,
            now=run.now,
            due_ms=run.now_ms,
            emit=user.emit,
            endpoints=self.settings.endpoints,
        )

    async def _load(self, run: _Run, user_ids: set[str]) -> None:
        """Load the tracked users of these records not in memory yet. During an incremental
        read a user not baselined is ignored: its own complete read will baseline it."""
        wanted = {u for u in user_ids & run.tracked if u not in run.ignored}
        wanted = {u for u in wanted if u not in run.users or run.users[u].stored is None}
        if not wanted:
            return
        for user_id, stored in (await self.store.load_users(run.account_id, wanted)).items():
            known = run.users.get(user_id)
            if known is not None:
                known.stored = stored
                run.loaded += 1
                continue
            baselined = bool(stored.state.baselined)
            if not baselined and not run.full:
                run.ignored.add(user_id)
                continue
            run.users[user_id] = self._user(stored, baselined)
            run.loaded += 1

    def _user(self, stored: StoredUser, baselined: bool) -> _User:
        return _User(
            stored,
            emit=baselined or self.settings.polling.emit_on_first_sync,
            was_baselined=baselined,
            live_before=_live(stored.snapshots),
        )

    async def _baseline_new(self, run: _Run) -> None:
        """Read users the feed has not baselined yet completely, each on its own."""
        known = self._baselined.setdefault(run.account_id, set())
        known &= run.tracked  # a user untracked and tracked again is baselined again
        unknown = run.tracked - known
        if not unknown:
            return
        loaded = await self.store.load_users(run.account_id, unknown)
        fresh = sorted(u for u, stored in loaded.items() if not stored.state.baselined)
        known |= unknown - set(fresh)
        for user_id in fresh[:BASELINE_BATCH]:
            run.users[user_id] = self._user(loaded[user_id], baselined=False)
            run.loaded += 1
            try:
                async for page in self.client.pages(run.account_id, user_id, None):
                    self._skipped(run, page.skipped)
                    for record in page.records:
                        self._detect(run, user_id, record)
            except UpstreamRejected as e:  # unknown upstream: not baselined, tried again later
                log.warning(
                    "baseline_failed", account_id=run.account_id, user_id=user_id, error=str(e)
                )
                del run.users[user_id]
                continue
            run.users[user_id].complete = True
            run.result.baselined += 1
        run.ignored |= set(fresh[BASELINE_BATCH:])

    async def _finish_full_read(self, run: _Run) -> None:
        """After a complete read of the account: every tracked user is baselined, and an
        assignment gone from it is removed once its user's own complete read agrees."""
        rest = run.tracked - run.users.keys()
        for user_id, stored in (await self.store.load_users(run.account_id, rest)).items():
            user = self._user(stored, bool(stored.state.baselined))
            if user.was_baselined and not user.live_before:
                continue  # nothing to write, nothing to remove
            run.users[user_id] = user
            user.stored = None  # loaded again only if one of its assignments is missing
        for user in run.users.values():
            user.complete = True
        self._baselined[run.account_id] = set(run.tracked)
        if run.result.skipped:  # a skipped record may be one we know: removals wait
            return
        for user_id, user in list(run.users.items()):
            missing = user.live_before - user.seen
            if missing:
                await self._confirm_removed(run, user_id, missing)

    async def _confirm_removed(self, run: _Run, user_id: str, missing: frozenset[str]) -> None:
        """Offset paging shifts when records are deleted during a read, so one read can skip
        a record that still exists: the user's own complete read must agree."""
        await self._load(run, {user_id})
        user = run.users[user_id]
        user.seen = set()
        try:
            async for page in self.client.pages(run.account_id, user_id, None):
                if page.skipped:
                    return
                for record in page.records:
                    self._detect(run, user_id, record)
        except UpstreamRejected as e:
            log.warning(
                "removal_check_failed", account_id=run.account_id, user_id=user_id, error=str(e)
            )
            return
        assert user.stored is not None
        for assignment_id in sorted(missing - user.seen):
            previous = user.stored.snapshots[assignment_id]
            if previous.record is None:
                continue
            gone = detect_removed(
                run.account_id, user_id, assignment_id, previous, now=run.now, emit=user.emit
            )
            self._add(run, user_id, assignment_id, gone, previous)

    # -- committing --

    async def _commit(
        self, run: _Run, done: ReadState | None, *, end_fallback: bool = False
    ) -> None:
        """Commit what the read found, fenced by the feed's lease. `done`: the feed's final
        state (ends the lease: the account is due an interval on); None: a flush (extends
        it), after which the users' snapshots leave memory when many are loaded."""
        lease, outbox = run.lease, run.outbox
        final = done is not None
        writes = []
        for user_id, user in run.users.items():
            # baselined only by the final commit: a read cut short must baseline again
            baseline = final and user.to_baseline
            if user.dirty or baseline:
                writes.append(
                    UserWrite(
                        user_id,
                        user.stored.snapshots if user.dirty and user.stored else None,
                        ReadState(baselined=True) if baseline else None,
                    )
                )
        async with lease.lock:
            if final:
                next_score = self._next_due_ms(lease)
            else:
                next_score = int((self.clock() + LEASE_SECONDS) * 1000)
            committed = await self.store.commit(
                run.account_id,
                outbox,
                token=lease.token,
                next_score=next_score,
                state=done,
                users=writes,
                end_fallback=end_fallback,
            )
            if not committed:
                raise StaleLease(f"feed lease on {lease.account_id} was taken over")
            lease.token = next_score
            lease.ended = final
        run.result.changes += len(outbox.changes)
        for change in outbox.changes:
            for event in change.events:
                run.result.events += 1
                self.metrics.events.labels(event["type"]).inc()
        if outbox.events and self.on_committed:
            self.on_committed(set(outbox.events))
        run.outbox = Outbox()
        evict = not final and run.loaded >= KEEP_LOADED
        for user in run.users.values():
            user.dirty = False
            if evict:
                user.stored = None
        if evict:
            run.loaded = 0

    def _next_due_ms(self, lease: Lease) -> int:
        interval = self.settings.polling.account_interval
        return int(next_due(lease.due_at, lease.claimed_at, interval, self.clock()) * 1000)

    async def _wait(self, lease: Lease, until: float) -> FeedResult:
        """Not read now: due again at `until`."""
        async with lease.lock:
            ok = await self.store.commit(
                lease.account_id,
                Outbox(),
                token=lease.token,
                next_score=int(until * 1000),
                state=None,
                users=[],
            )
            if not ok:
                raise StaleLease(f"feed lease on {lease.account_id} was taken over")
            lease.ended = True
        return FeedResult(waited=True)

    async def _unusable(self, lease: Lease, auto: bool, error: UpstreamError) -> None:
        """`strategy: auto` and the upstream cannot serve the feed: poll the account's users
        one by one until `full_resync_interval` has passed, then try the feed again."""
        if not auto:
            return
        if isinstance(error, FeedUnsupported):
            reason = "filter_ignored"
        elif error.status in (404, NOT_IMPLEMENTED):
            reason = f"status_{error.status}"
        else:
            return
        now = self.clock()
        retry_at = now + self.settings.polling.full_resync_interval
        await self.store.fall_back(lease.account_id, FeedFallback(reason, now, retry_at))
        self.metrics.feed_fallbacks.labels(reason).inc()
        log.warning(
            "feed_fallback",
            account_id=lease.account_id,
            reason=reason,
            error=str(error),
            retry_feed_at=from_epoch(retry_at).isoformat(),
        )
        if self.on_fallback is not None:
            self.on_fallback()

    def _skipped(self, run: _Run, skipped: dict[str, int]) -> None:
        for reason, count in skipped.items():
            run.result.skipped += count
            self.metrics.records_skipped.labels(reason).inc(count)
            log.warning("records_skipped", account_id=run.account_id, reason=reason, count=count)


def _live(snapshots: dict[str, Snapshot]) -> frozenset[str]:
    return frozenset(a for a, s in snapshots.items() if s.record is not None)


def _ignores_filter(page: Page, since: datetime) -> bool:
    """A record updated before the instant asked for: the upstream does not apply
    `filter[updated_after]` (whether the bound is inclusive is not known: equal is fine)."""
    for record in page.records:
        moment = parse_iso(record.get("updated_at"))
        if moment is not None and moment < since:
            return True
    return False
