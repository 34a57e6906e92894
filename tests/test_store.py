"""The Redis store against a real redis-server: atomic commit, fencing, queues, shared limits."""

from __future__ import annotations

import asyncio
import json
import time

from redis.asyncio import Redis

from service.detect import Snapshot, detect
from service.store import keys
from service.store.limits import Budget, SharedLimiter
from service.store.polls import Outbox, PollStore
from service.store.queue import EventQueue
from service.timefmt import from_epoch
from tests.redis_server import RedisServer

MEMBER = keys.user_member("acc:1", "u/1")


BUDGET = Budget("upstream", per_second=1, burst=1)


def an_outbox() -> Outbox:
    previous = Snapshot(1, {"id": "a1", "progress": 0})
    current = {"id": "a1", "progress": 10}
    change = detect("acc:1", "u/1", "a1", previous, current, now=from_epoch(1.7e9), emit=True)
    assert change is not None
    outbox = Outbox(changes=[change])
    for event in change.events:
        outbox.events.setdefault("hr", []).append((event["id"], json.dumps(event), 1000))
    return outbox


async def test_commit_is_atomic_and_fenced(redis: Redis) -> None:
    store = PollStore(redis)
    await store.add_users({MEMBER: 0})
    [(claimed, due_ms)] = await store.claim_due_users(now_ms=10, lease_until_ms=5000, limit=10)
    assert due_ms == 0
    assert claimed == MEMBER and keys.parse_user_member(claimed) == ("acc:1", "u/1")
    assert await store.claim_due_users(now_ms=10, lease_until_ms=6000, limit=10) == []

    # a stale token (another process took the user over) writes nothing at all
    outbox = an_outbox()
    snapshots = {c.assignment_id: c.snapshot for c in outbox.changes}
    stale = await store.commit(
        "acc:1",
        "u/1",
        outbox,
        token=4999,
        next_score=9000,
        state={"watermark": "1"},
        snapshots=snapshots,
    )
    assert stale is False
    assert await redis.exists(keys.snapshots("acc:1", "u/1"), keys.user_state("acc:1", "u/1")) == 0
    assert await redis.zcard("lw:ep:hr:due") == 0

    ok = await store.commit(
        "acc:1",
        "u/1",
        an_outbox(),
        token=5000,
        next_score=9000,
        state={"watermark": "1"},
        snapshots=snapshots,
    )
    assert ok is True
    state = await store.load_user("acc:1", "u/1", BUDGET)
    assert state.snapshots == {"a1": Snapshot(2, {"id": "a1", "progress": 10})}
    assert state.watermark_ms == 1
    assert state.permit_wait == 0  # the first request's permit came with the state
    assert (await store.load_user("acc:1", "u/1", BUDGET)).permit_wait > 0.9  # 1/s: spent
    assert await redis.zscore(keys.POLL_DUE, MEMBER) == 9000
    assert await redis.zcard("lw:ep:hr:due") == 2  # updated + progress_changed

    # the same change committed again (a poll replayed after a crash) is queued once
    again = await store.commit("acc:1", "u/1", an_outbox(), token=None, next_score=None)
    assert again is True and await redis.zcard("lw:ep:hr:due") == 2


async def test_two_processes_never_claim_the_same_user(
    redis: Redis, redis_server: RedisServer
) -> None:
    other = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        a, b = PollStore(redis), PollStore(other)
        await a.add_users({f"acc:u{n}": 0 for n in range(200)})
        now = int(time.time() * 1000)
        claims = await asyncio.gather(
            *[s.claim_due_users(now, now + 15000, 7) for _ in range(20) for s in (a, b)]
        )
        flat = [m for batch in claims for m, _ in batch]
        assert len(flat) == len(set(flat)) == 200
    finally:
        await other.aclose()


async def test_queue_lease_ack_retry_dead_and_replay(redis: Redis) -> None:
    queue = EventQueue(redis)
    store = PollStore(redis)
    await store.commit("acc:1", "u/1", an_outbox(), token=None, next_score=None)
    first = await queue.claim("hr", now_ms=2000, lease_until_ms=3000, limit=1)
    assert len(first) == 1 and first[0].meta.attempts == 0
    # its lease has not run out: nobody else gets it; once it has, it is claimed again
    rest = await queue.claim("hr", now_ms=2000, lease_until_ms=3001, limit=10)
    assert [e.event_id for e in rest] != [first[0].event_id] and len(rest) == 1
    again = await queue.claim("hr", now_ms=3000, lease_until_ms=4000, limit=10)
    assert [e.event_id for e in again] == [first[0].event_id]
    # the first claimant lost its lease: its ack changes nothing
    assert await queue.ack("hr", first[0]) is False
    assert await queue.depth("hr") == 2
    assert await queue.ack("hr", rest[0]) is True
    assert await queue.depth("hr") == 1

    event = again[0]
    event.meta.attempts, event.meta.last_error = 1, "HTTP 500"
    assert await queue.reschedule("hr", event, due_ms=5000)
    [retried] = await queue.claim("hr", now_ms=5000, lease_until_ms=6000, limit=10)
    assert retried.meta.attempts == 1 and retried.meta.last_error == "HTTP 500"
    assert await queue.dead_letter("hr", retried, now_ms=5500)
    assert await queue.depth("hr") == 0 and await queue.dead_count("hr") == 1
    [letter] = await queue.dead_letters("hr")
    assert letter["event_id"] == retried.event_id and letter["last_error"] == "HTTP 500"
    assert letter["event"]["id"] == retried.event_id

    assert await queue.replay("hr", now_ms=7000) == 1
    assert await queue.dead_count("hr") == 0
    replayed = await queue.claim("hr", now_ms=7000, lease_until_ms=8000, limit=10)
    assert [e.event_id for e in replayed] == [retried.event_id]
    assert all(await asyncio.gather(*[queue.ack("hr", e) for e in replayed]))
    assert await queue.depth("hr") == 0
    assert await redis.hlen("lw:ep:hr:body") == 0 and await redis.hlen("lw:ep:hr:meta") == 0


async def test_shared_limit_holds_across_clients(redis: Redis, redis_server: RedisServer) -> None:
    clients = [Redis.from_url(redis_server.url, decode_responses=True) for _ in range(3)]
    limiters = [SharedLimiter(c) for c in clients]
    granted: list[float] = []

    async def worker(limiter: SharedLimiter) -> None:
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            wait = await limiter.try_acquire(Budget("test", per_second=20, burst=1))
            if wait == 0:
                granted.append(time.monotonic())
            else:
                await asyncio.sleep(wait)

    try:
        await asyncio.gather(*[worker(limiter) for limiter in limiters])
    finally:
        for client in clients:
            await client.aclose()
    # 20/s for 2 s across three processes: about 40, never a burst beyond the rate
    assert 35 <= len(granted) <= 42
    granted.sort()
    for n, start in enumerate(granted):  # any 0.5 s window: 20/s x 0.5 s, +1 for the edge
        assert sum(1 for t in granted[n:] if t < start + 0.5) <= 11


async def test_pause_holds_every_limiter_until_it_runs_out(redis: Redis) -> None:
    limiter = SharedLimiter(redis)
    upstream = Budget("upstream", 100, 10, pause_key=keys.UPSTREAM_PAUSE)
    await limiter.pause(keys.UPSTREAM_PAUSE, 1.0)
    await limiter.pause(keys.UPSTREAM_PAUSE, 0.2)  # a shorter pause never shortens it
    wait = await limiter.try_acquire(upstream)
    assert 0.8 < wait <= 1.0
    await asyncio.sleep(wait)
    assert await limiter.try_acquire(upstream) == 0


async def test_snapshots_round_trip_compactly(redis: Redis) -> None:
    """A user's snapshots are one compressed value; odd records come back exactly."""
    store = PollStore(redis)
    records = {
        f"a{n}": Snapshot(n, {"id": f"a{n}", "progress": n, "title": "Sécurité 🔒", "n": 2**70})
        for n in range(1, 30)
    }
    records["gone"] = Snapshot(7, None)  # a tombstone
    await store.commit("acc:1", "u/1", Outbox(), token=None, next_score=None, snapshots=records)
    assert (await store.load_user("acc:1", "u/1", BUDGET)).snapshots == records
    assert await store.snapshot("acc:1", "u/1", "a3") == records["a3"]
    assert await store.snapshot("acc:1", "u/1", "nope") is None
    plain = len(json.dumps({a: [s.sequence, s.record] for a, s in records.items()}))
    assert await redis.strlen(keys.snapshots("acc:1", "u/1")) < plain / 2


async def test_snapshots_stored_by_0_1_are_read_and_replaced_on_the_next_commit(
    redis: Redis,
) -> None:
    """0.1 kept one hash field per assignment; after an upgrade nothing is detected again."""
    store = PollStore(redis)
    legacy = keys.legacy_snapshots("acc:1", "u/1")
    old = {"id": "a1", "progress": 10}
    await redis.hset(legacy, "a1", json.dumps({"s": 3, "r": old}))
    state = await store.load_user("acc:1", "u/1", BUDGET)
    assert state.snapshots == {"a1": Snapshot(3, old)} and state.legacy
    assert await store.snapshot("acc:1", "u/1", "a1") == Snapshot(3, old)
    await store.commit(
        "acc:1", "u/1", Outbox(), token=None, next_score=None, snapshots=state.snapshots
    )
    assert await redis.exists(legacy) == 0
    again = await store.load_user("acc:1", "u/1", BUDGET)
    assert again.snapshots == {"a1": Snapshot(3, old)} and not again.legacy
