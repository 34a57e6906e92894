"""Account feeds and user listings in Redis: many users' state loaded at once, a feed
read's atomic commit, `strategy: auto` fallbacks, and the users a listing names."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import cast

from redis.asyncio import Redis

from service.resources import ASSIGNMENTS, Resource
from service.store import keys
from service.store.log_policy import DEFAULT_LOG, LogPolicy
from service.store.polls import StoredUser
from service.store.read_state import FIELDS, ReadState, hash_fields
from service.store.scripts import CommitFeed, CommitListing, FallBack, Held

# users loaded per pipelined round trip
LOAD_BATCH = 500


@dataclass(frozen=True, slots=True)
class FeedFallback:
    """A `strategy: auto` account polled per user, because its upstream cannot serve the
    account feed; the feed is tried again from `retry_at` (epoch seconds)."""

    reason: str
    since: float
    retry_at: float

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: str) -> FeedFallback:
        data = json.loads(raw)
        return cls(str(data["reason"]), float(data["since"]), float(data["retry_at"]))


class FeedStore:
    def __init__(self, redis: Redis, log: LogPolicy = DEFAULT_LOG) -> None:
        """`log`: how the events committed are kept in the delivery log."""
        self.redis = redis
        # a feed read's users, events, state and lease outcome in one atomic step
        self.commit = CommitFeed(redis, log)
        # users added to and dropped from a listing (the dropped ones forgotten), with the
        # listing's state and the end of its lease, in one atomic step (False: lease lost)
        self.commit_listing = CommitListing(redis)
        self._fall_back = FallBack(redis)

    async def load_users(
        self, account_id: str, user_ids: Iterable[str], resource: Resource = ASSIGNMENTS
    ) -> dict[str, StoredUser]:
        """Each user's state and snapshots of `resource`, a few hundred users per round
        trip."""
        wanted = list(user_ids)
        prefix = resource.state_prefix
        state_fields = hash_fields(prefix)
        out: dict[str, StoredUser] = {}
        for start in range(0, len(wanted), LOAD_BATCH):
            batch = wanted[start : start + LOAD_BATCH]
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id in batch:
                    pipe.hmget(keys.user_state(account_id, user_id), state_fields)
                    pipe.get(keys.snapshots(account_id, user_id, resource))
                answers = await pipe.execute()
            legacy_wanted = []
            for n, user_id in enumerate(batch):
                state = ReadState.decode_list(answers[2 * n], prefix)
                out[user_id] = StoredUser(state, answers[2 * n + 1])
                if answers[2 * n + 1] is None:
                    legacy_wanted.append(user_id)
            for user_id in legacy_wanted:  # 0.1's form: only users never committed since
                raw = await self.redis.hgetall(keys.legacy_snapshots(account_id, user_id, resource))
                out[user_id].legacy = cast(dict[str, str], raw)
        return out

    async def baselined(
        self, account_id: str, user_ids: Iterable[str], resource: Resource = ASSIGNMENTS
    ) -> set[str]:
        """Those of these users whose baseline of `resource` is taken (their state's flag
        only)."""
        flag = next(iter(ReadState(baselined=True).encode(resource.state_prefix)))
        wanted = list(user_ids)
        done: set[str] = set()
        for start in range(0, len(wanted), LOAD_BATCH * 4):
            batch = wanted[start : start + LOAD_BATCH * 4]
            async with self.redis.pipeline(transaction=False) as pipe:
                for user_id in batch:
                    pipe.hget(keys.user_state(account_id, user_id), flag)
                flags = await pipe.execute()
            done |= {u for u, flag in zip(batch, flags, strict=True) if flag == "1"}
        return done

    async def users_version(self) -> str | None:
        return cast(str | None, await self.redis.get(keys.USERS_VERSION))

    async def feed_state(self, account_id: str, resource: Resource = ASSIGNMENTS) -> ReadState:
        prefix = resource.state_prefix
        values = await self.redis.hmget(keys.feed_state(account_id), hash_fields(prefix))
        return ReadState.decode_list(cast(list[str | None], values), prefix)

    # -- `strategy: auto` accounts polled per user --

    async def fallbacks(self) -> dict[str, FeedFallback]:
        raw = cast(dict[str, str], await self.redis.hgetall(keys.FEED_FALLBACK))
        return {account: FeedFallback.decode(value) for account, value in raw.items()}

    async def fall_back(self, account_id: str, fallback: FeedFallback, held: Held) -> bool:
        """False when the `held` lease of the feed read that fell back no longer holds
        (nothing written: taken over, or the account was forgotten meanwhile)."""
        return await self._fall_back(held, account_id, fallback.encode())

    async def end_fallback(self, account_id: str, user_ids: set[str]) -> None:
        """The account is read through its feed again: in one step its fallback ends and its
        users leave the per-user schedule (a running poll's lease with them)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.FEED_FALLBACK, account_id)
            members = [keys.user_member(account_id, user_id) for user_id in user_ids]
            if members:
                pipe.zrem(keys.POLL_DUE, *members)
            await pipe.execute()

    # -- `users: all`: the users the account's listing names --

    async def listing_state(self, account_id: str) -> ReadState:
        values = await self.redis.hmget(keys.discovery_state(account_id), FIELDS)
        return ReadState.decode_list(cast(list[str | None], values))

    async def listed(self, account_id: str) -> set[str]:
        return cast(set[str], await self.redis.smembers(keys.discovered_users(account_id)))

    async def hold_drop(self, account_id: str, users: list[str], seconds: float) -> None:
        """The users a complete listing left out while its drop is held (replacing any)."""
        key = keys.held_drop(account_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            for start in range(0, len(users), LOAD_BATCH * 4):
                pipe.sadd(key, *users[start : start + LOAD_BATCH * 4])
            pipe.expire(key, max(1, int(seconds)))
            await pipe.execute()

    async def held_drop(self, account_id: str) -> set[str]:
        return cast(set[str], await self.redis.smembers(keys.held_drop(account_id)))
