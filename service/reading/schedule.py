"""Polling schedules: due times in Redis, claimed by whichever process is free.

One scheduler per schedule: users polled one by one, accounts' change feeds, accounts' user
listings. APScheduler drives its periodic jobs: claim due members (tick), extend the leases
of reads in flight (heartbeat), reconcile the schedule with what should be on it (sync),
and, for users, report passed due dates (the overdue check). While members are waiting (the
last claim filled every free slot), a finished read claims the next ones at once instead of
waiting for the next tick, so throughput is not capped at concurrency per tick.

`run_once` is the burst mode: no jobs, every due user polled until none is (tests, tools).
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from redis.exceptions import RedisError

from service.config import Settings
from service.reading.overdue import CHECK_SECONDS, OverdueWatcher
from service.reading.runner import PollRunner, quietly
from service.store import keys
from service.store.directory import AccountDirectory
from service.store.leases import HEARTBEAT_SECONDS, Lease, Leases
from service.store.outcome import EndLease
from service.store.polls import AccountBackoff, PollStore
from service.store.redis_health import log_redis_error
from service.upstream.accounts import ACCOUNT_IN_FLIGHT

log = structlog.get_logger("schedule")

TICK_SECONDS = 0.25
POLL_STOP_GRACE = 3.0
SYNC_SECONDS = 30.0
# An account's reads come back after its provider's pause spread over this long (or the
# interval, if shorter): not all at one instant, which its provider may limit again.
PAUSE_SPREAD_SECONDS = 5.0
# One account's polls running in one process at most, when there are others: its requests
# are ACCOUNT_IN_FLIGHT at a time (the client), and one more poll each may commit or wait
# meanwhile. Polls beyond that would only wait for its requests, holding slots the other
# accounts could use (a slow provider held half of them).
ACCOUNT_POLLS = 2 * ACCOUNT_IN_FLIGHT


def account_share(concurrency: int, accounts: int) -> int | None:
    """How many of the slots one account's polls may hold; None: all (the only account)."""
    if accounts <= 1:
        return None
    return max(1, min(-(-concurrency // 2), ACCOUNT_POLLS))


def initial_due(member: str, now: float, interval: float) -> float:
    """Spread users over the interval (stable per user) instead of polling all at once."""
    offset = (zlib.crc32(member.encode()) % 10_000) / 10_000 * interval
    return now + offset


def over_account_share(members: list[str], running: dict[str, int], cap: int) -> set[str]:
    """Claimed users beyond an account's share of the slots: one busy or slow account must
    not take every poll slot from the others."""
    counts = dict(running)
    over: set[str] = set()
    for member in members:
        account = keys.parse_user_member(member)[0]
        counts[account] = counts.get(account, 0) + 1
        if counts[account] > cap:
            over.add(member)
    return over


def deferred_claims(
    members: list[str],
    backed_off: dict[str, AccountBackoff],
    running: dict[str, int],
    *,
    cap: int | None,
    now: float,
    interval: float,
    paused: dict[str, float] | None = None,
) -> dict[str, float]:
    """Claimed users not to poll now, each with when it is due again (epoch seconds).

    A user of a backed-off account waits for the back-off's end (spread over a minute, so
    they do not all come back at one instant); once it has ended, the next poll is the
    account's probe. A user (or feed, or listing) of an account its provider `paused` (until
    when) waits for the pause's end, spread over PAUSE_SPREAD_SECONDS. A user beyond its
    account's share of the slots (`cap`, None: no cap) comes back in a moment.
    """
    over = over_account_share(members, running, cap) if cap is not None else set()
    paused = paused or {}
    deferred: dict[str, float] = {}
    for member in members:
        account = keys.parse_user_member(member)[0]
        backoff = backed_off.get(account)
        pause = paused.get(account, 0.0)
        if backoff is not None and backoff.until > max(now, pause):
            deferred[member] = initial_due(member, backoff.until, min(interval, 60.0))
        elif pause > now:
            deferred[member] = initial_due(member, pause, min(interval, PAUSE_SPREAD_SECONDS))
        elif member in over:
            deferred[member] = now + TICK_SECONDS * 2
    return deferred


class PollScheduler:
    """`members()`: what the schedule should hold (users, or accounts), each due first
    within `interval` of being added (`spread`), or at once."""

    def __init__(
        self,
        leases: Leases,
        store: PollStore,
        members: Callable[[], Awaitable[set[str]]],
        runner: PollRunner,
        settings: Settings,
        accounts: AccountDirectory,
        *,
        interval: float,
        spread: bool = True,
        overdue: OverdueWatcher | None = None,
        first: Callable[[], Sequence[str]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.leases = leases
        self.first = first  # members claimed before the others when due
        self.store = store
        self.members = members
        self.interval = interval
        self.spread = spread
        self.runner = runner
        self.overdue = overdue
        self.settings = settings
        self.accounts = accounts  # the accounts read: each gets its share of the slots
        self.clock = clock
        self.polling: dict[str, Lease] = {}  # member → the lease of its poll running here
        self.tasks: set[asyncio.Task[None]] = set()
        self.jobs = AsyncIOScheduler()
        self._jobs_running: set[asyncio.Task[Any]] = set()  # jobs' runs under way
        self.accepting = False
        self._claiming = asyncio.Lock()
        self._backlog = False  # the last claim took as many users as it asked for
        self._kick: asyncio.Task[None] | None = None
        self._resync: asyncio.Task[None] | None = None
        # whether a sync went through: until one does (Redis away at start), every tick tries
        # again, so the schedule fills as soon as Redis is there, not a SYNC_SECONDS later
        self._in_sync = False
        self._generation = -1  # the directory's generation the last sync followed

    @property
    def running(self) -> bool:
        return bool(self.jobs.running and self.accepting)

    def start(self) -> None:
        self.accepting = True
        job = {"max_instances": 1, "coalesce": True, "misfire_grace_time": None}
        every: list[tuple[Callable[[], Awaitable[object]], float]] = [
            (self.sync_users, SYNC_SECONDS),
            (self.tick, TICK_SECONDS),
            (self.heartbeat, HEARTBEAT_SECONDS),
        ]
        if self.overdue is not None:
            every.append((self.overdue.check, CHECK_SECONDS))
        for work, seconds in every:
            name = work.__name__
            self.jobs.add_job(self._tracked(work), "interval", seconds=seconds, name=name, **job)
        self.jobs.start()
        self._synced = asyncio.ensure_future(self.sync_users())

    def _tracked(self, work: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[None]]:
        """`work` as a job whose run `stop` can wait for (APScheduler only cancels them)."""

        async def job() -> None:
            task = asyncio.current_task()
            assert task is not None
            self._jobs_running.add(task)
            try:
                await work()
            finally:
                self._jobs_running.discard(task)

        return job

    async def run_once(self) -> int:
        """Burst mode, without jobs: schedule the tracked users, poll every user due now
        (`concurrency` at a time) until none is, then report passed due dates once.
        Returns how many polls ran. A user deferred to later (its account backed off or
        over its share) is not waited for."""
        self.accepting = True
        await self.sync_users()
        polls = 0
        # leases are short (LEASE_SECONDS): a long read in a burst is renewed as in a run
        beating = asyncio.create_task(self._beat(), name="heartbeat")
        try:
            while True:
                async with self._claiming:
                    started = await self._claim()
                # all claimed may have been deferred while more are due (the claim was full)
                if not started and not self.tasks and not self._backlog:
                    break
                polls += started
                await asyncio.gather(*list(self.tasks), return_exceptions=True)
        finally:
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)
        if self.overdue is not None:
            await self.overdue.check()
        return polls

    async def stop(self, timeout: float) -> None:
        """Take no new polls; give running ones a moment, then hand the rest back.

        A poll cut short loses nothing (it committed nothing past its last flush and runs
        again from the same watermark), so polls get at most POLL_STOP_GRACE, not `timeout`.
        """
        self.accepting = False
        if self.jobs.running:
            # no job starts from now on, and one under way (a claim, a sync, a renewal, a due
            # date check) ends by itself: shutting down cancels it, and a claim cancelled
            # while Redis answers leaves its leases to run out unanswered (and the job's
            # cancellation logged as a crash)
            self.jobs.pause()
            if self._jobs_running:
                await asyncio.wait(self._jobs_running, timeout=min(timeout, POLL_STOP_GRACE))
            self.jobs.shutdown(wait=False)
        for task in (self._kick, self._resync):
            if task is not None:
                await asyncio.gather(task, return_exceptions=True)
        async with self._claiming:  # a claim under way has started its polls or handed back
            pass
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=min(timeout, POLL_STOP_GRACE))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for lease in list(self.polling.values()):  # cancelled polls: due again at once
            await self._end(lease, self.leases.hand_back(lease))

    def resync(self) -> None:
        """What the schedule should hold changed (users listed, an account's strategy):
        sync now rather than at the next periodic sync. Burst mode syncs in run_once."""
        if self.running and (self._resync is None or self._resync.done()):
            self._resync = asyncio.create_task(self.sync_users())

    async def sync_users(self) -> None:
        """Schedule new members (spread over the interval), unschedule those gone."""
        now, interval = self.clock(), self.interval if self.spread else 0.0
        self._generation = self.accounts.generation
        try:
            # the accounts' version before members are worked out from them: a view that is
            # stale, or moves meanwhile, writes nothing (the directory sees the move within a
            # second, and the next tick syncs again)
            await self.accounts.current()
            version = self.accounts.version
            wanted = await self.members()
            await self.leases.schedule_only(
                wanted, lambda m: initial_due(m, now, interval), version
            )
            self._in_sync = True
        except RedisError as e:
            log_redis_error(log, "sync_users_failed", e)

    async def tick(self) -> None:
        if self._claiming.locked():  # a claim is running; the next finished poll kicks again
            return
        async with self._claiming:
            if not self._in_sync or await self._accounts_moved():
                await self.sync_users()
                if not self._in_sync:  # Redis is still away: a claim would fail as well
                    return
            await self._claim()

    async def _accounts_moved(self) -> bool:
        """The accounts read changed since the last sync (discovery, in any process: the
        directory looks at most once a second): the schedule follows at once, not a
        SYNC_SECONDS later, so an account linked is read within an interval and a read."""
        try:
            await self.accounts.current()
        except RedisError:
            return False
        return self.accounts.generation != self._generation

    def _poll_finished(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        # claims go in batches of a quarter of the slots: one claim per poll would add a
        # Redis round trip to every poll
        free = self.settings.polling.concurrency - len(self.tasks)
        batch = max(1, self.settings.polling.concurrency // 4)
        if self._backlog and self.running and free >= batch:
            if self._kick is None or self._kick.done():
                self._kick = asyncio.create_task(self.tick())

    async def _claim(self) -> int:
        """Claim due users into the free slots and start their polls; returns how many."""
        free = self.settings.polling.concurrency - len(self.tasks)
        self._backlog = False
        if not self.accepting or free <= 0:
            return 0
        try:
            claimed = await self.leases.claim(free, self.first() if self.first else ())
            if not self.accepting:  # stopped while claiming: due again at once, elsewhere
                for lease in claimed:
                    await self.leases.hand_back(lease)
                return 0
            self._backlog = len(claimed) == free
            if not claimed:
                return 0
            now = self.clock()
            troubles = await self.store.account_troubles(now)
            backed_off, paused = troubles.backed_off, troubles.paused
            accounts_read = (await self.accounts.current()).settings.keys()
        except RedisError as e:
            log_redis_error(log, "claim_users_failed", e)
            return 0
        running = Counter(lease.account_id for lease in self.polling.values())
        accounts = set(accounts_read) | running.keys()
        deferred = deferred_claims(
            [lease.member for lease in claimed],
            backed_off,
            running,
            cap=account_share(self.settings.polling.concurrency, len(accounts)),
            now=now,
            interval=self.interval,
            paused=paused,
        )
        started = 0
        for lease in claimed:
            if lease.member in deferred:  # not polled now: released with its new due time
                await self._end(lease, self.leases.release(lease, EndLease(deferred[lease.member])))
                continue
            self.polling[lease.member] = lease
            task = asyncio.create_task(self._poll(lease), name=f"poll:{lease.member}")
            self.tasks.add(task)
            task.add_done_callback(self._poll_finished)
            started += 1
        return started

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            await self.heartbeat()

    async def heartbeat(self) -> None:
        """Extend the leases of polls still running (claimed, waiting for the budget, or
        reading), all in one script call, so no other process takes them over."""
        try:
            lost = await self.leases.extend_all(list(self.polling.values()))
        except RedisError as e:
            log_redis_error(log, "lease_extend_failed", e)
            return
        for lease in lost:  # its commit will find out as well; the process stalled
            log.debug("lease_extend_lost", member=lease.member)

    async def _poll(self, lease: Lease) -> None:
        try:
            await self.runner.run(lease)
        except asyncio.CancelledError:
            raise  # the lease stays here for stop() to hand back
        except Exception:  # the runner's own failure handling failed: the lease runs out
            log.exception("poll_end_failed", account_id=lease.account_id, user_id=lease.user_id)
        if self.polling.get(lease.member) is lease:
            del self.polling[lease.member]

    async def _end(self, lease: Lease, moving: Awaitable[bool]) -> None:
        """The lease is released or handed back: this process polls the user no longer."""
        await quietly(moving)
        if self.polling.get(lease.member) is lease:
            del self.polling[lease.member]
