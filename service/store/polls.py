"""Poll state in Redis: the schedule of due users, each user's snapshots and state, the
atomic commit of a poll, overdue watches, and accounts backed off or paused."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import cast

from redis.asyncio import Redis

from service.changes.detect import Snapshot
from service.changes.outbox import OverdueWatch
from service.resources import ASSIGNMENTS, Resource
from service.store import keys
from service.store.limits import RateLimit
from service.store.log_policy import DEFAULT_LOG, LogPolicy
from service.store.read_state import ReadState, hash_fields
from service.store.scripts import (
    BackOff,
    ClaimDue,
    CommitOverdue,
    CommitPoll,
    CountFailure,
    Held,
    LoadUser,
    PauseAccount,
    due_score,
    lease_ms,
)
from service.store.snapshots import decode_legacy_snapshots, decode_snapshots

# PAUSED_ACCOUNTS lives this long after its latest pause: longer than any Retry-After (the
# client caps them at 600 s), so only a key nobody paused for an hour goes
PAUSED_ACCOUNTS_TTL = 3600
# FAILING_ACCOUNTS goes after an hour without a failure: failures that far apart are not a
# run (a successful read's commit deletes its account's count at once anyway)
FAILING_ACCOUNTS_TTL = 3600


@dataclass
class StoredUser:
    """One user as a poll finds it in Redis: its state and its snapshots."""

    state: ReadState
    raw_snapshots: str | None
    # snapshots as 0.1 stored them (a hash), when the user has none in today's form yet
    legacy: dict[str, str] = field(default_factory=dict)
    permit_granted: bool = False  # the budget's permit for the poll's first request

    @property
    def decoded(self) -> bool:
        """The snapshots were decoded (a read needed them)."""
        return "snapshots" in self.__dict__

    @cached_property
    def snapshots(self) -> dict[str, Snapshot]:
        """Decoded on first use: a poll that reads no record never needs them."""
        if self.raw_snapshots is None and self.legacy:
            return decode_legacy_snapshots(self.legacy)
        return decode_snapshots(self.raw_snapshots)


@dataclass(frozen=True, slots=True)
class AccountBackoff:
    """An account whose key or integration was refused (401/403/412), or whose reads keep
    failing (5xx, timeouts): its users, feed and listing wait."""

    until: float  # epoch seconds
    failures: int  # back-offs in a row: each refusal, or each failed probe of a failing one
    error: str

    def encode(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decode(cls, raw: str) -> AccountBackoff:
        data = json.loads(raw)
        return cls(float(data["until"]), int(data["failures"]), str(data["error"]))


@dataclass(frozen=True, slots=True)
class AccountTroubles:
    backed_off: dict[str, AccountBackoff]
    paused: dict[str, float]  # account → until when its provider asked it to wait (seconds)


def _backoffs(raw: dict[str, str]) -> dict[str, AccountBackoff]:
    return {account: AccountBackoff.decode(value) for account, value in raw.items()}


def _pauses(raw: list[tuple[str, float]]) -> dict[str, float]:
    return {account: score / 1000 for account, score in raw}


class PollStore:
    def __init__(self, redis: Redis, log: LogPolicy = DEFAULT_LOG) -> None:
        """`log`: how the events committed are kept in the delivery log."""
        self.redis = redis
        self._load = LoadUser(redis)
        self._claim = ClaimDue(redis)
        # snapshots, user state, outgoing events and the lease's outcome in one atomic step
        self.commit = CommitPoll(redis, log)
        # claimed due dates' events queued and their watches ended, each fenced by its claim
        self.commit_overdue = CommitOverdue(redis, log)
        self._back_off = BackOff(redis)
        self._count_failure = CountFailure(redis)
        self._pause = PauseAccount(redis)

    # -- one user's poll --

    async def load_user(
        self, account_id: str, user_id: str, budget: RateLimit, resource: Resource = ASSIGNMENTS
    ) -> StoredUser:
        """One round trip: the user's state and every snapshot of `resource`, and a permit
        of `budget` for the first request (spent when granted: the caller hands it to its
        client)."""
        loaded = await self._load(
            account_id, user_id, budget.script_keys(), budget.script_args(), resource
        )
        state = ReadState.decode(loaded.state, resource.state_prefix)
        return StoredUser(state, loaded.snapshots, loaded.legacy, loaded.permit_wait <= 0)

    async def user_state(
        self, account_id: str, user_id: str, resource: Resource = ASSIGNMENTS
    ) -> ReadState:
        prefix = resource.state_prefix
        values = await self.redis.hmget(keys.user_state(account_id, user_id), hash_fields(prefix))
        return ReadState.decode_list(cast(list[str | None], values), prefix)

    async def user_snapshots(
        self, account_id: str, user_id: str, resource: Resource = ASSIGNMENTS
    ) -> dict[str, Snapshot]:
        """Every snapshot of the user's `resource` (decoding them is what costs: read them
        once for all that is needed of one user)."""
        raw = cast(str | None, await self.redis.get(keys.snapshots(account_id, user_id, resource)))
        if raw is None:  # 0.1's form, for a user never committed since
            legacy = await self.redis.hgetall(keys.legacy_snapshots(account_id, user_id, resource))
            return decode_legacy_snapshots(cast(dict[str, str], legacy))
        return decode_snapshots(raw)

    # -- due dates watched for `assignment.overdue` --

    async def claim_overdue(
        self, now: float, seconds: float, limit: int
    ) -> tuple[int, list[tuple[str, OverdueWatch]]]:
        """Claim watched due dates passed by `now` (leased like polls for `seconds` on
        Redis' clock, and fenced by the lease): the claims' token, and each member as
        stored, with what it says."""
        token, claimed = await self._claim(keys.OVERDUE, due_score(now), lease_ms(seconds), limit)
        return token, [
            (member, OverdueWatch(*keys.parse_overdue_member(member))) for member, _ in claimed
        ]

    # -- accounts backed off after 401/403/412 --

    async def backed_off_accounts(self) -> dict[str, AccountBackoff]:
        raw = cast(dict[str, str], await self.redis.hgetall(keys.BLOCKED_ACCOUNTS))
        return _backoffs(raw)

    async def account_backoff(self, account_id: str) -> AccountBackoff | None:
        """One account's back-off (a failed read reads its own, not every account's: in a
        StackOne outage hundreds are backed off at once)."""
        raw = cast(str | None, await self.redis.hget(keys.BLOCKED_ACCOUNTS, account_id))
        return None if raw is None else AccountBackoff.decode(raw)

    async def account_troubles(self, now: float) -> AccountTroubles:
        """What a claim of polls checks of their accounts, in one round trip: those backed
        off, those their provider paused at `now`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.BLOCKED_ACCOUNTS)
            pipe.zrangebyscore(keys.PAUSED_ACCOUNTS, f"({int(now * 1000)}", "+inf", withscores=True)
            blocked, paused = await pipe.execute()
        return AccountTroubles(_backoffs(blocked), _pauses(paused))

    async def back_off_account(self, account_id: str, backoff: AccountBackoff, held: Held) -> bool:
        """Back the account off while the `held` lease (the schedule, member and token of the
        read that says so) holds: False when it does not (nothing written: another process
        took the read over, or the account was forgotten meanwhile)."""
        return await self._back_off(held, account_id, backoff.encode())

    # -- accounts whose reads keep failing (5xx, timeouts), backed off as above --

    async def count_failure(self, account_id: str, held: Held) -> int:
        """One more read of the account failed: how many did in a row; 0 when the `held`
        lease of that read no longer holds (nothing counted: taken over, or the account was
        forgotten meanwhile)."""
        return await self._count_failure(held, account_id, FAILING_ACCOUNTS_TTL)

    async def end_troubles(self, account_id: str) -> None:
        """A read of the account succeeded without a commit to say so: its run of failing
        reads and its back-off end at once, as commit_parts.lua's answered ends them."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(keys.FAILING_ACCOUNTS, account_id)
            pipe.hdel(keys.BLOCKED_ACCOUNTS, account_id)
            await pipe.execute()

    # -- accounts their provider asked to wait (a 429 with provider_errors) --

    async def pause_account(self, account_id: str, until: float, now: float, held: Held) -> bool:
        """The account waits until `until` (seconds), in every process; never shortens a
        pause. Pauses over by `now` are dropped. False when the `held` lease of the read
        that was asked to wait no longer holds (nothing written)."""
        until_ms, now_ms = int(until * 1000), int(now * 1000)
        return await self._pause(held, account_id, until_ms, now_ms, PAUSED_ACCOUNTS_TTL)

    async def paused_accounts(self, now: float) -> dict[str, float]:
        """Each account still paused at `now`: until when (seconds)."""
        raw = await self.redis.zrangebyscore(
            keys.PAUSED_ACCOUNTS, f"({int(now * 1000)}", "+inf", withscores=True
        )
        return _pauses(cast(list[tuple[str, float]], raw))
