"""Tracked users: the config's, those its user listings name (`users: all`), and those
added at run time (kept in Redis); and which of them are polled one by one."""

from __future__ import annotations

import bisect
from typing import cast

from redis.asyncio import Redis

from service.config import Settings
from service.contract.admin import User, UserSource
from service.store import keys
from service.store.directory import AccountDirectory
from service.store.feeds import FeedFallback, FeedStore
from service.store.read_state import FIELDS, ReadState
from service.store.scripts import due_or_expiry_ms


class TrackedUsers:
    def __init__(
        self, redis: Redis, settings: Settings, feeds: FeedStore, accounts: AccountDirectory
    ) -> None:
        self.redis = redis
        self.settings = settings
        self.feeds = feeds
        self.accounts = accounts  # which accounts are read, and how (config and discovered)
        self.configured = {
            keys.user_member(account.account_id, user)
            for account in settings.accounts
            for user in account.listed_users
        }

    def in_config(self, account_id: str, user_id: str) -> bool:
        return keys.user_member(account_id, user_id) in self.configured

    async def runtime(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(keys.RUNTIME_USERS))

    async def listed(self) -> set[str]:
        """Every user the `users: all` accounts' listings name, as members."""
        members: set[str] = set()
        for account_id in (await self.accounts.current()).listing_accounts:
            listed = await self.feeds.listed(account_id)
            members |= {keys.user_member(account_id, user_id) for user_id in listed}
        return members

    async def members(self) -> set[str]:
        return self.configured | await self.listed() | await self.runtime()

    async def of_account(self, account_id: str) -> set[str]:
        """The user ids tracked in one account."""
        return {
            user_id
            for account, user_id in map(keys.parse_user_member, await self.members())
            if account == account_id
        }

    async def feed_accounts_in_force(self) -> set[str]:
        """Accounts read through their change feed now (not fallen back to per-user)."""
        feed_accounts = (await self.accounts.current()).feed_accounts
        if not feed_accounts:
            return set()
        return feed_accounts - (await self.fallbacks()).keys()

    async def per_user_members(self) -> set[str]:
        """The tracked users polled one by one: all but those their account's feed covers."""
        feeds = await self.feed_accounts_in_force()
        return {m for m in await self.members() if keys.parse_user_member(m)[0] not in feeds}

    async def polled_by_feed(self, account_id: str, user_id: str) -> bool:
        member = keys.user_member(account_id, user_id)
        return account_id in await self.feed_accounts_in_force() and member in await self.members()

    async def fallbacks(self) -> dict[str, FeedFallback]:
        """`strategy: auto` accounts polled per user now. A fallback left from when an
        account was `auto` does not apply once the config says otherwise."""
        auto_accounts = (await self.accounts.current()).auto_accounts
        if not auto_accounts:
            return {}
        fallbacks = await self.feeds.fallbacks()
        return {a: f for a, f in fallbacks.items() if a in auto_accounts}

    async def add(self, account_id: str, user_id: str, due_ms: int) -> bool:
        """Track a user from now on; False when it was tracked already. A user of an account
        read through its feed is not scheduled: the feed's next read baselines it."""
        member = keys.user_member(account_id, user_id)
        if member in self.configured:
            return False
        by_feed = account_id in await self.feed_accounts_in_force()
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.RUNTIME_USERS, member)
            pipe.incr(keys.USERS_VERSION)
            if not by_feed:
                pipe.zadd(keys.POLL_DUE, {member: due_ms}, nx=True)
            added, *_ = await pipe.execute()
        return bool(added)

    async def remove(self, account_id: str, user_id: str) -> bool:
        """Stop tracking a run-time user and forget its snapshots; False when not one."""
        member = keys.user_member(account_id, user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.RUNTIME_USERS, member)
            pipe.incr(keys.USERS_VERSION)
            pipe.zrem(keys.POLL_DUE, member)
            pipe.zrem(keys.USER_WEIGHTS, member)
            pipe.delete(
                *keys.every_snapshots(account_id, user_id), keys.user_state(account_id, user_id)
            )
            removed, *_ = await pipe.execute()
        return bool(removed)

    async def describe(
        self, after: str | None = None, limit: int | None = None
    ) -> tuple[list[User], str | None]:
        """Tracked users with where each comes from and how its polls go, in the order of
        their members: up to `limit` (None: all) after the member `after`; and the member
        of the last one when more follow (None: the end)."""
        runtime, listed = await self.runtime(), await self.listed()
        members = sorted(self.configured | listed | runtime)
        if after is not None:
            members = members[bisect.bisect_right(members, after) :]
        last = None
        if limit is not None and len(members) > limit:
            members = members[:limit]
            last = members[-1]
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.zscore(keys.POLL_DUE, member)
                pipe.hmget(keys.user_state(*keys.parse_user_member(member)), FIELDS)
            answers = await pipe.execute()
        out = []
        for n, member in enumerate(members):
            account_id, user_id = keys.parse_user_member(member)
            due, state = answers[2 * n], answers[2 * n + 1]
            decoded = ReadState.decode_list(state)
            source: UserSource = (
                "config"
                if member in self.configured
                else "runtime"
                if member in runtime
                else "listing"
            )
            out.append(
                User(
                    account_id=account_id,
                    user_id=user_id,
                    source=source,
                    next_poll_at_ms=None if due is None else due_or_expiry_ms(due),
                    watermark_ms=decoded.watermark_ms,
                    last_poll_ms=decoded.last_poll_ms,
                    last_full_sync_ms=decoded.last_full_sync_ms,
                    failures=decoded.failures or 0,
                    last_error=decoded.last_error,
                )
            )
        return out, last
