"""What the admin API shows of a page of accounts, read in one pipelined round trip however
many accounts the page holds: each account's feed and listing state and when each is next
due, how many users its listing names, the state of the users it names one by one, and
until when its provider's unserved resources are skipped (store/unserved.py's marks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from redis.asyncio import Redis

from service.resources import Resource
from service.store import keys
from service.store.read_state import FIELDS, ReadState
from service.store.scripts import due_or_expiry_ms


@dataclass(frozen=True, slots=True)
class AccountAsk:
    """What to read of one account."""

    account_id: str
    feed: bool  # read through its change feed (strategy account or auto)
    listing: bool  # users: all
    named_users: tuple[str, ...] = ()  # the users the config or the admin API name
    user_reads: bool = False  # its named users are polled one by one: read their state
    # the resources it tracks after its first: the ones a provider may not serve
    unservable: tuple[Resource, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountReads:
    feed: ReadState | None = None
    feed_due_ms: int | None = None
    listing: ReadState | None = None
    listing_due_ms: int | None = None
    listed_users: int = 0  # how many users its listing names
    named_not_listed: int = 0  # named users the listing does not name (counted once)
    # each named user's poll state and when it is next due (user_reads only)
    users: list[tuple[ReadState, int | None]] = field(default_factory=list)
    # (resource name, until when (ms)) of each resource marked unserved, however long ago
    unserved: list[tuple[str, int]] = field(default_factory=list)

    @property
    def users_tracked(self) -> int:
        return self.listed_users + self.named_not_listed


def _due(score: Any) -> int | None:
    return None if score is None else due_or_expiry_ms(float(score))


async def read_accounts(redis: Redis, asks: list[AccountAsk]) -> list[AccountReads]:
    """Each ask's reads, in order, in one pipeline."""
    if not asks:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for ask in asks:
            member = keys.account_member(ask.account_id)
            if ask.feed:
                pipe.hmget(keys.feed_state(ask.account_id), FIELDS)
                pipe.zscore(keys.FEED_DUE, member)
            if ask.listing:
                pipe.hmget(keys.discovery_state(ask.account_id), FIELDS)
                pipe.zscore(keys.DISCOVERY_DUE, member)
                pipe.scard(keys.discovered_users(ask.account_id))
                if ask.named_users:
                    pipe.smismember(keys.discovered_users(ask.account_id), list(ask.named_users))
            if ask.user_reads:
                for user_id in ask.named_users:
                    pipe.hmget(keys.user_state(ask.account_id, user_id), FIELDS)
                    pipe.zscore(keys.POLL_DUE, keys.user_member(ask.account_id, user_id))
            if ask.unservable:
                members = [keys.unserved_member(ask.account_id, r) for r in ask.unservable]
                pipe.zmscore(keys.UNSERVED_RESOURCES, members)
        answers = iter(await pipe.execute())
    out = []
    for ask in asks:
        feed = feed_due = listing = listing_due = None
        listed, not_listed = 0, len(ask.named_users)
        if ask.feed:
            feed = ReadState.decode_list(cast(list[str | None], next(answers)))
            feed_due = _due(next(answers))
        if ask.listing:
            listing = ReadState.decode_list(cast(list[str | None], next(answers)))
            listing_due = _due(next(answers))
            listed = int(next(answers))
            if ask.named_users:
                not_listed = sum(1 for member in next(answers) if not member)
        users = []
        if ask.user_reads:
            for _ in ask.named_users:
                state = ReadState.decode_list(cast(list[str | None], next(answers)))
                users.append((state, _due(next(answers))))
        unserved = []
        if ask.unservable:
            until = zip(ask.unservable, next(answers), strict=True)
            unserved = [(r.name, int(ms)) for r, ms in until if ms is not None]
        out.append(
            AccountReads(feed, feed_due, listing, listing_due, listed, not_listed, users, unserved)
        )
    return out
