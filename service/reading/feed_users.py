"""The complete reads of single users a feed read needs: new users' baselines, and a second
complete read before a record missing from a full read of the account is removed.

Both go through the per-user endpoint of the feed's resource (`GET /unified/lms/users/{id}/
assignments`, or `/completions`), which is authoritative for one user's set of records. A
user whose read fails is left as it was (not baselined, nothing removed) and backed off; the
account's feed goes on.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import structlog

from service.changes.detect import LatestVersions, detect_removed
from service.errors import UpstreamError, UpstreamProviderLimited, UpstreamRateLimited
from service.metrics import Metrics
from service.reading.feed_run import FeedRun, count_skipped
from service.resources import Resource
from service.store.feeds import FeedStore
from service.upstream.client import StackOneClient

log = structlog.get_logger("feed")

BASELINE_BATCH = 25  # new users baselined per feed read, each by a complete read of its own
CONFIRM_BATCH = 100  # users whose removals one full read confirms; the rest wait for the next
PARALLEL_READS = 4  # single users read at once (the key's budget paces them all)
# a user whose own read fails is tried again a minute later, doubling up to an hour
BACKOFF_FIRST = 60.0
BACKOFF_MAX = 3600.0


class CompleteUserReads:
    def __init__(
        self,
        store: FeedStore,
        client: StackOneClient,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.metrics = metrics
        self.clock = clock
        # per account and resource name: the users known baselined
        self._baselined: dict[tuple[str, str], set[str]] = {}
        self._version: dict[str, str | None] = {}  # per account: the tracked users' version
        # (account, user, resource name) → (failures, retry at)
        self._failed: dict[tuple[str, str, str], tuple[int, float]] = {}

    async def many_new(self, account_id: str, tracked: set[str], resource: Resource) -> bool:
        """More users wait for their baseline than one read takes on its own: the account's
        own full read baselines them all in one pass instead (1,000 users joining at once
        took 40 reads, their changes meanwhile waiting)."""
        known = await self._known(account_id, resource)
        unknown = tracked - known
        if len(unknown) <= BASELINE_BATCH:
            return False
        done = await self.store.baselined(account_id, unknown, resource)
        known |= done  # the cache baseline_new reads: asked once, not twice a read
        return len(unknown - done) > BASELINE_BATCH

    async def baseline_new(self, run: FeedRun) -> None:
        """Read users the feed has not baselined yet completely, each on its own; more than
        BASELINE_BATCH wait for the next read (the feed ignores them meanwhile)."""
        known = await self._known(run.account_id, run.resource)
        known &= run.tracked
        unknown = run.tracked - known
        if not unknown:
            return
        done = await self.store.baselined(run.account_id, unknown, run.resource)
        known |= done
        now = self.clock()
        due = sorted(u for u in unknown - done if self._retry_at(run, u) <= now)
        batch = due[:BASELINE_BATCH]
        if not batch:
            return
        loaded = await self.store.load_users(run.account_id, batch, run.resource)
        for user_id in batch:
            run.meet(user_id, loaded[user_id]).complete = True
        results = await self._read_all(run, batch, strict=False)
        for user_id in batch:
            if results[user_id] is None:  # failed: tried again later, not baselined now
                del run.users[user_id]
                run.ignored.add(user_id)
            else:
                run.result.baselined += 1
        run.ignored |= unknown - done - set(batch)

    async def finish_full_read(self, run: FeedRun) -> None:
        """After a complete read of the account: every tracked user is baselined, and a
        record gone from it is removed once its user's own complete read agrees."""
        rest = run.tracked - run.users.keys()
        loaded = await self.store.load_users(run.account_id, rest, run.resource)
        for user_id, stored in loaded.items():
            user = run.meet(user_id, stored)
            user.stored = None  # loaded again only if one of its records is missing
            run.loaded -= 1
            if user.was_baselined and not user.live_before:
                del run.users[user_id]  # nothing to write, nothing to remove
        for user in run.users.values():
            user.complete = True
        if run.skipped:  # a skipped record may be one we know: removals wait
            return
        missing = {
            user_id: user.live_before - user.seen.keys()
            for user_id, user in run.users.items()
            if user.live_before - user.seen.keys()
        }
        confirm = sorted(missing)[:CONFIRM_BATCH]
        if len(missing) > len(confirm):
            log.info(
                "removals_postponed", account_id=run.account_id, users=len(missing) - len(confirm)
            )
        await run.load(set(confirm))
        for user_id in confirm:
            run.users[user_id].seen = {}
        results = await self._read_all(run, confirm, strict=True)
        for user_id in confirm:
            if results[user_id] is not None:
                self._remove(run, user_id, missing[user_id])

    def all_baselined(self, run: FeedRun) -> None:
        """A full read of the account committed: every user it tracked is baselined (known
        only now: a commit that failed baselined nobody, and the next read must see so)."""
        self._baselined[(run.account_id, run.resource.name)] = set(run.tracked)

    def _remove(self, run: FeedRun, user_id: str, missing: frozenset[str]) -> None:
        """Offset paging shifts when records are deleted during a read, so one read can skip
        a record that still exists: removed are those the user's own read agrees on."""
        user = run.users[user_id]
        for record_id in sorted(missing - user.seen.keys()):
            previous = user.snapshots[record_id]
            if previous.record is not None:
                gone = detect_removed(
                    run.account_id,
                    user_id,
                    record_id,
                    previous,
                    now=run.now,
                    emit=user.emit,
                    resource=run.resource,
                )
                run.add(user_id, gone, previous)

    async def _read_all(
        self, run: FeedRun, user_ids: list[str], *, strict: bool
    ) -> dict[str, list[dict[str, Any]] | None]:
        """Each user's complete read, a few at a time, detected into the run when it
        succeeds; None for a user whose read failed."""
        gate = asyncio.Semaphore(PARALLEL_READS)

        async def one(user_id: str) -> list[dict[str, Any]] | None:
            async with gate:
                return await self._read(run, user_id, strict=strict)

        records = await asyncio.gather(*(one(u) for u in user_ids))
        results = dict(zip(user_ids, records, strict=True))
        for user_id, read in results.items():
            for record in read or []:
                run.detect(user_id, record)
        return results

    async def _read(
        self, run: FeedRun, user_id: str, *, strict: bool
    ) -> list[dict[str, Any]] | None:
        """One user's records, one version each; None when the read fails, or (`strict`:
        to confirm a removal) when a record was skipped: it may be the one."""
        latest: LatestVersions[str] = LatestVersions()
        try:
            async for page in self.client.pages(run.account_id, user_id, None, run.resource):
                run.result.pages += 1  # the budget counts these too
                count_skipped(self.metrics, run, page.skipped)
                if page.skipped and strict:
                    return None
                for record in page.records:
                    latest.add(str(record["id"]), record)
        except (UpstreamRateLimited, UpstreamProviderLimited):
            # the key, or the whole account, is paused: the feed read ends and runs again later
            raise
        except UpstreamError as e:
            self._fail(run, user_id, e)
            return None
        self._failed.pop((run.account_id, user_id, run.resource.name), None)
        return list(latest.take().values())

    def _fail(self, run: FeedRun, user_id: str, error: UpstreamError) -> None:
        key = (run.account_id, user_id, run.resource.name)
        failures = self._failed.get(key, (0, 0.0))[0] + 1
        delay = min(BACKOFF_FIRST * 2.0 ** (failures - 1), BACKOFF_MAX)
        self._failed[key] = (failures, self.clock() + delay)
        self.metrics.poll_failures.labels("feed_user_read").inc()
        log.warning(
            "feed_user_read_failed",
            account_id=run.account_id,
            user_id=user_id,
            resource=run.resource.name,
            error=str(error),
            status=error.status,
            failures=failures,
            retry_in=round(delay, 1),
        )

    def _retry_at(self, run: FeedRun, user_id: str) -> float:
        return self._failed.get((run.account_id, user_id, run.resource.name), (0, 0.0))[1]

    async def _known(self, account_id: str, resource: Resource) -> set[str]:
        """The users this process knows baselined in `resource`, forgotten when tracked
        users changed since (a user removed and added again must be baselined again)."""
        version = await self.store.users_version()
        if self._version.get(account_id, "") != version:
            self._version[account_id] = version
            for key in [k for k in self._baselined if k[0] == account_id]:
                del self._baselined[key]
        return self._baselined.setdefault((account_id, resource.name), set())
