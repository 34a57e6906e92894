"""Poll leases, the whole life of one: claim, extend, release, hand back.

A user's member in `keys.POLL_DUE` is scored by when it is next due. Claiming a due user sets
its score to the lease's expiry, and that score is the fencing token of every write of the
poll (see fence.lua): a poll whose lease ran out and was claimed elsewhere writes nothing.
The poll's commit moves the score on to the next due time, which ends the lease.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis

from service.store import keys
from service.store.scripts import ClaimDue, MovePollLease
from service.store.user_state import UserState

# A dead process's users are polled again this soon; a live poll extends its lease every
# third of it (the scheduler's heartbeat).
LEASE_SECONDS = 15.0


@dataclass
class Lease:
    """A claimed user. `token` (the lease expiry, ms) changes whenever the lease moves."""

    member: str
    account_id: str
    user_id: str
    token: int
    due_at: float  # when it was due (s): the next poll is due an interval later
    claimed_at: float
    # held while the token is in use (a commit, an extension), so none uses a stale one
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # the poll's last commit moved the user on to its next due time: that score is no
    # longer a lease, and nothing may move it as one (a heartbeat that waited for the lock)
    ended: bool = False


class PollLeases:
    def __init__(self, redis: Redis, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._claim = ClaimDue(redis)
        self._move = MovePollLease(redis)

    async def claim(self, limit: int) -> list[Lease]:
        """Lease up to `limit` users that are due now."""
        now = self.clock()
        token = int((now + LEASE_SECONDS) * 1000)
        claimed = await self._claim(keys.POLL_DUE, int(now * 1000), token, limit)
        return [
            Lease(member, *keys.parse_user_member(member), token, due_ms / 1000, now)
            for member, due_ms in claimed
        ]

    async def extend(self, lease: Lease) -> bool:
        """Keep a running poll's lease for another LEASE_SECONDS; False when it was lost or
        has ended."""
        async with lease.lock:
            if lease.ended:
                return False
            token = int((self.clock() + LEASE_SECONDS) * 1000)
            if not await self._move(lease.member, lease.token, token):
                return False
            lease.token = token
            return True

    async def release(self, lease: Lease, due_ms: int, state: UserState | None = None) -> bool:
        """End the lease without a commit: the user is next due at `due_ms`, with `state`
        (a failed poll's failure count and error) written at the same time."""
        async with lease.lock:
            if lease.ended:
                return False
            lease.ended = await self._move(lease.member, lease.token, due_ms, state)
            return lease.ended

    async def hand_back(self, lease: Lease) -> bool:
        """End the lease of a poll that did not run (stopping, deferred): due again at once,
        for whichever process claims it first."""
        return await self.release(lease, int(self.clock() * 1000))
