"""The complete reads of single users a feed read needs: new users' baselines, and a second
complete read before an assignment missing from a full read of the account is removed.

Both go through the per-user endpoint (`GET /unified/lms/users/{id}/assignments`), which is
authoritative for one user's set of assignments.
"""

from __future__ import annotations

import structlog

from service.detect import detect_removed
from service.errors import UpstreamRejected
from service.feed_run import FeedRun, count_skipped
from service.metrics import Metrics
from service.store.feeds import FeedStore
from service.upstream.client import StackOneClient

log = structlog.get_logger("feed")

BASELINE_BATCH = 25  # new users baselined per feed read, each by a complete read of its own


class CompleteUserReads:
    def __init__(self, store: FeedStore, client: StackOneClient, metrics: Metrics) -> None:
        self.store = store
        self.client = client
        self.metrics = metrics
        self._baselined: dict[str, set[str]] = {}  # per account: users known baselined

    async def baseline_new(self, run: FeedRun) -> None:
        """Read users the feed has not baselined yet completely, each on its own; more than
        BASELINE_BATCH wait for the next read (the feed ignores them meanwhile)."""
        known = self._baselined.setdefault(run.account_id, set())
        known &= run.tracked  # a user untracked and tracked again is baselined again
        unknown = run.tracked - known
        if not unknown:
            return
        loaded = await self.store.load_users(run.account_id, unknown)
        fresh = sorted(u for u, stored in loaded.items() if not stored.state.baselined)
        known |= unknown - set(fresh)
        for user_id in fresh[:BASELINE_BATCH]:
            run.meet(user_id, loaded[user_id])
            if await self._read(run, user_id, "baseline_failed", strict=False):
                run.users[user_id].complete = True
                run.result.baselined += 1
            else:  # tried again at the next read
                del run.users[user_id]
        run.ignored |= set(fresh[BASELINE_BATCH:])

    async def finish_full_read(self, run: FeedRun) -> None:
        """After a complete read of the account: every tracked user is baselined, and an
        assignment gone from it is removed once its user's own complete read agrees."""
        rest = run.tracked - run.users.keys()
        for user_id, stored in (await self.store.load_users(run.account_id, rest)).items():
            user = run.meet(user_id, stored)
            user.stored = None  # loaded again only if one of its assignments is missing
            run.loaded -= 1
            if user.was_baselined and not user.live_before:
                del run.users[user_id]  # nothing to write, nothing to remove
        for user in run.users.values():
            user.complete = True
        self._baselined[run.account_id] = set(run.tracked)
        if run.result.skipped:  # a skipped record may be one we know: removals wait
            return
        for user_id, user in list(run.users.items()):
            missing = user.live_before - user.seen.keys()
            if missing:
                await self._confirm_removed(run, user_id, missing)

    async def _confirm_removed(self, run: FeedRun, user_id: str, missing: frozenset[str]) -> None:
        """Paging shifts when records are deleted during a read, so one read can skip a
        record that still exists: the user's own complete read must agree."""
        await run.load({user_id})
        user = run.users[user_id]
        user.seen = {}
        if not await self._read(run, user_id, "removal_check_failed", strict=True):
            return
        for assignment_id in sorted(missing - user.seen.keys()):
            previous = user.snapshots[assignment_id]
            if previous.record is not None:
                gone = detect_removed(
                    run.account_id, user_id, assignment_id, previous, now=run.now, emit=user.emit
                )
                run.add(user_id, gone, previous)

    async def _read(self, run: FeedRun, user_id: str, failure: str, *, strict: bool) -> bool:
        """One user's complete read into the run; False when the user is unknown upstream,
        or (`strict`: to confirm a removal) when a record was skipped: it may be the one."""
        try:
            async for page in self.client.pages(run.account_id, user_id, None):
                count_skipped(self.metrics, run, page.skipped)
                if page.skipped and strict:
                    return False
                for record in page.records:
                    run.detect(user_id, record)
        except UpstreamRejected as e:
            log.warning(failure, account_id=run.account_id, user_id=user_id, error=str(e))
            return False
        return True
