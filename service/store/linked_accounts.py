"""The linked accounts account discovery found (`GET /accounts`), as Redis holds them for
every process: each one's public fields, and those that turned out to be no LMS account;
the listing's atomic commit, and forgetting an unlinked account's state.

A linked account's `credentials` and `setup_information` are secrets of the customer's
provider connection: `LinkedAccount` has no field for them, so they are never stored,
logged or shown.
"""

from __future__ import annotations

from typing import cast

from redis.asyncio import Redis

from service.linked_account import LinkedAccount
from service.resources import RESOURCES
from service.store import keys
from service.store.read_costs import full_read_fields
from service.store.read_state import FIELDS, ReadState
from service.store.scripts import CommitAccounts, MarkNotLms

# an unlinked account's users forgotten per round trip
FORGET_BATCH = 500

__all__ = ["LinkedAccount", "LinkedAccountStore"]


class LinkedAccountStore:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        # a listing's findings (accounts found or changed, accounts unlinked), its state and
        # next due time in one atomic step, fenced by its lease (False: the lease is lost)
        self.commit = CommitAccounts(redis)
        self._mark_not_lms = MarkNotLms(redis)

    async def version(self) -> int:
        raw = await self.redis.get(keys.LINKED_VERSION)
        return int(raw or 0)

    async def all(self) -> dict[str, LinkedAccount]:
        """Every linked account discovery knows, active or not."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.LINKED_ACCOUNTS))
        return {account_id: LinkedAccount.decode(value) for account_id, value in raw.items()}

    async def not_lms(self) -> dict[str, int]:
        """Account id → when (ms) an account that answered as no LMS account is tried again."""
        raw = await self.redis.zrange(keys.NOT_LMS_ACCOUNTS, 0, -1, withscores=True)
        return {account_id: int(score) for account_id, score in cast(list[tuple[str, float]], raw)}

    async def listing_state(self) -> ReadState:
        values = await self.redis.hmget(keys.ACCOUNT_LISTING_STATE, FIELDS)
        return ReadState.decode_list(cast(list[str | None], values))

    async def hold_drop(self, account_ids: list[str], seconds: float) -> None:
        """The accounts a complete listing left out while its drop is held (replacing any)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.HELD_ACCOUNT_DROP)
            if account_ids:
                pipe.sadd(keys.HELD_ACCOUNT_DROP, *account_ids)
            pipe.expire(keys.HELD_ACCOUNT_DROP, max(1, int(seconds)))
            await pipe.execute()

    async def held_drop(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(keys.HELD_ACCOUNT_DROP))

    async def mark_not_lms(self, account_id: str, retry_at_ms: int) -> bool:
        """The account answered as no LMS account: not read until `retry_at_ms`. False when
        it was marked until then or later already (another process's read meanwhile), or
        when a listing unlinked it while the read was in flight (nothing is written: its
        forgetting would not clear the mark)."""
        return await self._mark_not_lms(account_id, retry_at_ms)

    async def to_forget(self) -> list[str]:
        return sorted(cast(set[str], await self.redis.smembers(keys.FORGET_ACCOUNTS)))

    async def forget(self, account_id: str) -> int:
        """Forget an unlinked account's state, in batches, and returns how many of its users
        went. Its schedule entries go first, so a read of it in flight (in any process)
        finds its lease gone and commits nothing; what a failed read marks of the whole
        account (its back-off, failure count, pause, feed fallback, unserved resources:
        each write fenced by the read's lease) goes once no lease of it is left, so none
        outlives it; its users' set goes last, so a process that dies midway
        has lost nothing it needs to finish: the account stays in FORGET_ACCOUNTS and the
        next listing, wherever it runs, forgets the rest."""
        member = keys.account_member(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(keys.FEED_DUE, member)
            pipe.zrem(keys.DISCOVERY_DUE, member)
            await pipe.execute()
        users = await self._users_of(account_id)
        for start in range(0, len(users), FORGET_BATCH):
            batch = users[start : start + FORGET_BATCH]
            members = [keys.user_member(account_id, user_id) for user_id in batch]
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(keys.POLL_DUE, *members)
                pipe.zrem(keys.USER_WEIGHTS, *members)
                pipe.srem(keys.RUNTIME_USERS, *members)
                for user_id in batch:
                    pipe.delete(
                        *keys.every_snapshots(account_id, user_id),
                        keys.user_state(account_id, user_id),
                    )
                await pipe.execute()
        overdue = [m async for m in self.redis.zscan_iter(keys.OVERDUE, match=f"{member}:*")]
        for start in range(0, len(overdue), FORGET_BATCH):
            await self.redis.zrem(keys.OVERDUE, *overdue[start : start + FORGET_BATCH])
        async with self.redis.pipeline(transaction=True) as pipe:
            # no lease of the account is left: no read backs it off, counts its failures,
            # pauses it, falls it back or marks a resource of it again
            pipe.hdel(keys.FEED_FALLBACK, account_id)
            pipe.hdel(keys.BLOCKED_ACCOUNTS, account_id)
            pipe.hdel(keys.FAILING_ACCOUNTS, account_id)
            pipe.zrem(keys.PAUSED_ACCOUNTS, account_id)
            unserved = [keys.unserved_member(account_id, r) for r in RESOURCES.values()]
            pipe.zrem(keys.UNSERVED_RESOURCES, *unserved)
            pipe.delete(
                keys.feed_state(account_id),
                keys.discovery_state(account_id),
                keys.held_drop(account_id),
                keys.discovered_users(account_id),
            )
            pipe.hdel(keys.READ_COSTS, *full_read_fields(account_id))
            pipe.incr(keys.USERS_VERSION)  # users went: caches of who is baselined look again
            pipe.srem(keys.FORGET_ACCOUNTS, account_id)
            await pipe.execute()
        return len(users)

    async def _users_of(self, account_id: str) -> list[str]:
        """Every user of the account with state: listed, added at run time, polled one by
        one (an id is quoted in a member, so `*` in the pattern matches ids only)."""
        pattern = f"{keys.account_member(account_id)}:*"
        users = cast(set[str], await self.redis.smembers(keys.discovered_users(account_id)))
        async for member in self.redis.sscan_iter(keys.RUNTIME_USERS, match=pattern):
            users.add(keys.parse_user_member(member)[1])
        async for member, _ in self.redis.zscan_iter(keys.POLL_DUE, match=pattern):
            users.add(keys.parse_user_member(member)[1])
        return sorted(users)
