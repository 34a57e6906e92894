"""Tracked users: the config's, plus those added at run time (kept in Redis)."""

from __future__ import annotations

from typing import Any, cast

from redis.asyncio import Redis

from service.config import Settings
from service.store import keys
from service.store.user_state import FIELDS, UserState


class TrackedUsers:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.configured = {
            keys.user_member(account.account_id, user)
            for account in settings.accounts
            for user in account.users
        }

    def in_config(self, account_id: str, user_id: str) -> bool:
        return keys.user_member(account_id, user_id) in self.configured

    async def runtime(self) -> set[str]:
        return cast(set[str], await self.redis.smembers(keys.RUNTIME_USERS))

    async def members(self) -> set[str]:
        return self.configured | await self.runtime()

    async def add(self, account_id: str, user_id: str, due_ms: int) -> bool:
        """Track a user from now on; False when it was tracked already."""
        member = keys.user_member(account_id, user_id)
        if member in self.configured:
            return False
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(keys.RUNTIME_USERS, member)
            pipe.zadd(keys.POLL_DUE, {member: due_ms}, nx=True)
            added, _ = await pipe.execute()
        return bool(added)

    async def remove(self, account_id: str, user_id: str) -> bool:
        """Stop tracking a run-time user and forget its snapshots; False when not one."""
        member = keys.user_member(account_id, user_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.srem(keys.RUNTIME_USERS, member)
            pipe.zrem(keys.POLL_DUE, member)
            pipe.delete(
                keys.snapshots(account_id, user_id),
                keys.legacy_snapshots(account_id, user_id),
                keys.user_state(account_id, user_id),
            )
            removed, *_ = await pipe.execute()
        return bool(removed)

    async def describe(self) -> list[dict[str, Any]]:
        """Every tracked user with where it comes from and how its polls go."""
        runtime = await self.runtime()
        members = sorted(self.configured | runtime)
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.zscore(keys.POLL_DUE, member)
                pipe.hmget(keys.user_state(*keys.parse_user_member(member)), FIELDS)
            answers = await pipe.execute()
        out = []
        for n, member in enumerate(members):
            account_id, user_id = keys.parse_user_member(member)
            due, state = answers[2 * n], answers[2 * n + 1]
            decoded = UserState.decode_list(state)
            out.append(
                {
                    "account_id": account_id,
                    "user_id": user_id,
                    "source": "config" if member in self.configured else "runtime",
                    "next_poll_at_ms": int(due) if due is not None else None,
                    "watermark_ms": decoded.watermark_ms,
                    "last_poll_ms": decoded.last_poll_ms,
                    "last_full_sync_ms": decoded.last_full_sync_ms,
                    "failures": decoded.failures or 0,
                    "last_error": decoded.last_error,
                }
            )
        return out
