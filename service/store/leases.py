"""Leased schedules, the whole life of a lease: claim, extend, release, hand back.

A schedule is a zset of members (users to poll, accounts whose change feed or user listing
to read), each scored by when it is next due. Claiming a due member sets its score to its
lease (LEASED + the lease's expiry), and that score is the fencing token of every write of
the work (see fence.lua): work whose lease ran out and was claimed elsewhere writes nothing.
The work's commit says what becomes of the lease (outcome.EndLease: the member is due again
then; KeepLease: a flush, the work goes on), and only the store turns that into a score.

Two clocks, each for what it can judge (see lease.lua). When a member is due is judged on
the claiming process's clock, as due times are written from process clocks (an interval on
from when the last read was due; a test's clock). Whether a lease still holds is judged on
Redis' clock alone: leases are taken, extended and found run out by the scripts on Redis'
TIME, so a process whose clock runs ahead may claim due members early, but never takes a
live lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import cast

from redis.asyncio import Redis
from redis.exceptions import WatchError

from service.store import keys
from service.store.outcome import LEASE_SECONDS as LEASE_SECONDS
from service.store.outcome import EndLease
from service.store.read_state import FIELDS, ReadState
from service.store.scripts import (
    LEASED,
    ClaimDue,
    DueNow,
    ExtendLeases,
    Held,
    MoveLease,
    due_or_expiry_ms,
    due_score,
    lease_ms,
)

# live work extends its lease this often (see LEASE_SECONDS)
HEARTBEAT_SECONDS = LEASE_SECONDS / 3


@dataclass
class Lease:
    """A claimed member. `token` (its score: LEASED + the lease's expiry, ms on Redis' clock)
    changes whenever the lease moves."""

    member: str
    account_id: str
    user_id: str  # "" for an account's feed or listing
    token: int
    due_at: float  # when it was due (s): the next run is due an interval later
    claimed_at: float  # on this process's clock
    zset: str  # the schedule it is a lease on
    # held while the token is in use (a commit, an extension), so none uses a stale one
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # the work's last commit moved the member on to its next due time: that score is no
    # longer a lease, and nothing may move it as one (a heartbeat that waited for the lock)
    ended: bool = False

    @property
    def held(self) -> Held:
        """What fences a write of the work by this lease (fence.lua's held: the schedule,
        the member, the token); read under `lock`, so the heartbeat cannot move the token
        before the write."""
        return self.zset, self.member, self.token


class Leases:
    """One schedule (`zset`) and the leases on it; `state_key(member)` is the hash of the
    member's ReadState, written with a released lease."""

    def __init__(
        self,
        redis: Redis,
        zset: str,
        state_key: Callable[[str], str],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.zset = zset
        self.state_key = state_key
        self.clock = clock
        self._claim = ClaimDue(redis)
        self._move = MoveLease(redis)
        self._due_now = DueNow(redis)
        self._extend = ExtendLeases(redis)

    async def claim(self, limit: int, first: Sequence[str] = ()) -> list[Lease]:
        """Lease up to `limit` members that are due now, or whose lease ran out (their
        process died); those of `first` that are due before the others."""
        now = self.clock()
        token, claimed = await self._claim(
            self.zset, due_score(now), lease_ms(LEASE_SECONDS), limit, first
        )
        return [
            Lease(member, *keys.parse_user_member(member), token, due_ms / 1000, now, self.zset)
            for member, due_ms in claimed
        ]

    async def extend(self, lease: Lease) -> bool:
        """Keep running work's lease for another LEASE_SECONDS; False when it was lost or
        has ended."""
        async with lease.lock:
            return not lease.ended and not await self._extend_held([lease])

    async def extend_all(self, leases: list[Lease]) -> list[Lease]:
        """The heartbeat: keep every running lease for another LEASE_SECONDS, in one script
        call. Returns those lost. A lease whose token is in use is left out: its commit
        ends it or keeps it itself, and a new token meanwhile would fence that commit out."""
        free = [lease for lease in leases if not lease.ended and not lease.lock.locked()]
        for lease in free:  # free: taken at once, without a switch to another task
            await lease.lock.acquire()
        try:
            return await self._extend_held(free)
        finally:
            for lease in free:
                lease.lock.release()

    async def _extend_held(self, leases: list[Lease]) -> list[Lease]:
        """Extend leases whose locks are held here; returns those lost."""
        held = [(lease.member, lease.token) for lease in leases]
        tokens = await self._extend(self.zset, lease_ms(LEASE_SECONDS), held)
        lost = []
        for lease, token in zip(leases, tokens, strict=True):
            if token is None:
                lost.append(lease)
            else:
                lease.token = token
        return lost

    async def release(
        self, lease: Lease, outcome: EndLease, state: ReadState | None = None
    ) -> bool:
        """End the lease without a commit: the member is next due at `outcome.due`, with
        `state` (a failed read's failure count and error) written at the same time; due at
        once instead when a read now was asked for meanwhile (due_now)."""
        async with lease.lock:
            if lease.ended:
                return False
            moved = await self._move(self._keys(lease), lease.member, lease.token, outcome, state)
            lease.ended = moved
            return moved

    async def hand_back(self, lease: Lease) -> bool:
        """End the lease of work that did not run (stopping, deferred): due again at once,
        for whichever process claims it first."""
        return await self.release(lease, EndLease(self.clock()))

    async def state(self, member: str) -> ReadState:
        values = await self.redis.hmget(self.state_key(member), FIELDS)
        return ReadState.decode_list(cast(list[str | None], values))

    def _keys(self, lease: Lease) -> tuple[str, str]:
        return self.zset, self.state_key(lease.member)

    # -- the schedule's membership --

    async def schedule_only(
        self,
        members: set[str],
        first_due: Callable[[str], float],
        linked_version: int | None = None,
    ) -> bool:
        """The schedule holds exactly `members`: those new to it are added, due at
        `first_due(member)` (epoch seconds); those no longer among them are removed (a
        running lease removed so ends: its commit finds no token).

        `linked_version`: the version of the discovered accounts `members` were worked out
        from (AccountDirectory.version). When the accounts changed since (another process
        unlinked one and forgot its schedule entries), nothing is written and False is
        returned: a process's cached view would put an account forgotten a moment ago back
        on the schedule, and read it. The directory sees the change within a second, and
        its schedules sync again."""
        if linked_version is None:
            scheduled = await self.scheduled()
            await self.add({m: first_due(m) for m in members - scheduled.keys()})
            await self.remove(sorted(scheduled.keys() - members))
            return True
        async with self.redis.pipeline(transaction=True) as pipe:
            try:
                await pipe.watch(keys.LINKED_VERSION)
                if int(await pipe.get(keys.LINKED_VERSION) or 0) != linked_version:
                    return False
                now_held = set(cast(list[str], await pipe.zrange(self.zset, 0, -1)))
                pipe.multi()  # type: ignore[no-untyped-call]
                new = {m: due_score(first_due(m)) for m in members - now_held}
                if new:
                    pipe.zadd(self.zset, new, nx=True)
                if gone := sorted(now_held - members):
                    pipe.zrem(self.zset, *gone)
                await pipe.execute()
            except WatchError:
                return False  # the accounts changed meanwhile
        return True

    async def add(self, due: dict[str, float]) -> int:
        """Schedule members not yet scheduled (ZADD NX), each due at its time (epoch
        seconds): running leases stay untouched."""
        if not due:
            return 0
        scores = {member: due_score(at) for member, at in due.items()}
        added = await self.redis.zadd(self.zset, dict(scores), nx=True)
        return int(added or 0)

    async def remove(self, members: list[str]) -> None:
        if members:
            await self.redis.zrem(self.zset, *members)

    async def scheduled(self) -> dict[str, float]:
        raw = await self.redis.zrange(self.zset, 0, -1, withscores=True)
        return dict(cast(list[tuple[str, float]], raw))

    async def oldest_due_ms(self) -> float | None:
        """The earliest due time of any member (running work's lease counts as not due)."""
        first = await self.redis.zrangebyscore(
            self.zset, "-inf", f"({LEASED}", start=0, num=1, withscores=True
        )
        return float(cast(list[tuple[str, float]], first)[0][1]) if first else None

    async def due_ms(self, member: str) -> int | None:
        """When the member is next due (or its lease's expiry on Redis' clock, while it
        runs)."""
        score = await self.redis.zscore(self.zset, member)
        return None if score is None else due_or_expiry_ms(score)

    async def due_now(self, member: str) -> bool:
        """Read a scheduled member at once; one being read is read again as soon as that
        read ends (its lease is not broken: the read is not wasted). False when it is not
        scheduled."""
        return await self._due_now((self.zset, self.state_key(member)), member)


async def leased(redis: Redis, zset: str) -> list[str]:
    """The members of a schedule (or of an endpoint's queue) being worked on now, their
    leases live or run out (tools and benchmarks)."""
    return cast(list[str], await redis.zrangebyscore(zset, LEASED, "+inf"))


def _user_state_key(member: str) -> str:
    return keys.user_state(*keys.parse_user_member(member))


def _feed_state_key(member: str) -> str:
    return keys.feed_state(keys.parse_user_member(member)[0])


def _discovery_state_key(member: str) -> str:
    return keys.discovery_state(keys.parse_user_member(member)[0])


def user_leases(redis: Redis, *, clock: Callable[[], float] = time.time) -> Leases:
    """Users to poll one by one (`strategy: per_user`)."""
    return Leases(redis, keys.POLL_DUE, _user_state_key, clock=clock)


def feed_leases(redis: Redis, *, clock: Callable[[], float] = time.time) -> Leases:
    """Accounts whose change feed to read (`strategy: account | auto`)."""
    return Leases(redis, keys.FEED_DUE, _feed_state_key, clock=clock)


def discovery_leases(redis: Redis, *, clock: Callable[[], float] = time.time) -> Leases:
    """Accounts whose user listing to read (`users: all`)."""
    return Leases(redis, keys.DISCOVERY_DUE, _discovery_state_key, clock=clock)


def account_listing_leases(redis: Redis, *, clock: Callable[[], float] = time.time) -> Leases:
    """The key's linked-account listing (`account_discovery`): one member, ACCOUNT_LISTING."""
    return Leases(
        redis, keys.ACCOUNT_LISTING_DUE, lambda _: keys.ACCOUNT_LISTING_STATE, clock=clock
    )
