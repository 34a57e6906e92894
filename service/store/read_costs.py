"""The budget's shared state in Redis: what reads cost (learned by every process), users'
poll weights (written with each poll's commit), the feeds' activity (in their states,
written with each read's commit), and the plan last published."""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from redis.asyncio import Redis

from service.store import keys
from service.store.read_state import FIELDS, ReadState

# learned averages keep this many reads at most, so they follow a change in page counts
LEARNED_READS = 10_000
_FULL = "full:"  # READ_COSTS fields: full:<schedule>:<account> → pages of its full read


def full_read_fields(account_id: str) -> list[str]:
    """The READ_COSTS fields of an account's full reads (its feed's, its listing's)."""
    return [f"{_FULL}{schedule}:{account_id}" for schedule in ("feed", "listing")]


class ReadCosts:
    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def learn(self, kind: str, pages: int, reads: int) -> None:
        """Add reads of one kind (`user`, `feed`) and the pages they took."""
        if not reads:
            return
        # not a transaction: Redis out of memory refuses the command, not a whole MULTI
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hincrbyfloat(keys.READ_COSTS, f"{kind}:pages", pages)
            pipe.hincrby(keys.READ_COSTS, f"{kind}:reads", reads)
            total_pages, total_reads = await pipe.execute()
        if int(total_reads) > LEARNED_READS:  # halve both: the average stays, and moves on
            await self.redis.hset(
                keys.READ_COSTS,
                mapping={
                    f"{kind}:pages": float(total_pages) / 2,
                    f"{kind}:reads": int(total_reads) // 2,
                },
            )

    async def learn_full_read(self, schedule: str, account_id: str, pages: int) -> None:
        await self.redis.hset(keys.READ_COSTS, f"{_FULL}{schedule}:{account_id}", pages)

    async def learned(self) -> dict[str, float]:
        """Pages per read by kind (`user`, `feed`), and `full` (every full read's pages)."""
        raw = cast(dict[str, str], await self.redis.hgetall(keys.READ_COSTS))
        out: dict[str, float] = {"full": 0.0}
        for field, value in raw.items():
            if field.startswith(_FULL):
                out["full"] += float(value)
            elif field.endswith(":reads") and float(value) > 0:
                kind = field.removesuffix(":reads")
                out[kind] = float(raw.get(f"{kind}:pages", 0)) / float(value)
        return out

    async def weights(self, members: Iterable[str]) -> list[float | None]:
        wanted = list(members)
        out: list[float | None] = []
        for start in range(0, len(wanted), 1000):
            chunk = wanted[start : start + 1000]
            out += await self.redis.zmscore(keys.USER_WEIGHTS, chunk)
        return out

    async def feed_states(self, account_ids: Iterable[str]) -> list[ReadState]:
        """The feeds' states (their activity weighs on the adaptive cadence), in order."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for account_id in account_ids:
                pipe.hmget(keys.feed_state(account_id), FIELDS)
            return [ReadState.decode_list(values) for values in await pipe.execute()]

    async def publish(self, plan_json: str) -> bool:
        """Publish the plan; True when it differs from the one published before."""
        previous = await self.redis.set(keys.BUDGET_PLAN, plan_json, get=True)
        return previous != plan_json

    async def published(self) -> str | None:
        return cast(str | None, await self.redis.get(keys.BUDGET_PLAN))
