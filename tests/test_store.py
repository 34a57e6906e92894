"""The Redis store against a real redis-server: atomic commit, fencing, queues, shared limits."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import math
import time
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service import jsonfmt
from service.changes.detect import Snapshot, detect
from service.changes.outbox import Outbox, Queued
from service.metrics import Metrics
from service.reading.plan import RATE_MEMORY, ConfiguredCadence
from service.reading.user_poll import Poller
from service.sim.lms import SimLMS
from service.store import keys
from service.store.leases import LEASE_SECONDS, user_leases
from service.store.limits import RateLimit, SharedLimiter, SharedRate, api_key_rate
from service.store.outcome import EndLease
from service.store.polls import PollStore
from service.store.queue import EventQueue
from service.store.read_state import ReadState
from service.store.scripts import LEASED
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient
from tests.helpers import ACCOUNT, Clock, make_settings, redis_ms
from tests.redis_server import RedisServer

MEMBER = keys.user_member("acc:1", "u/1")
HR = keys.EndpointKeys("hr")


ONE_A_SECOND = RateLimit("upstream", per_second=1, burst=1)


def an_outbox() -> Outbox:
    previous = Snapshot(1, {"id": "a1", "progress": 0})
    current = {"id": "a1", "progress": 10}
    change = detect("acc:1", "u/1", "a1", previous, current, now=from_epoch(1.7e9), emit=True)
    assert change is not None
    outbox = Outbox(changes=[change])
    for event in change.events:
        outbox.events.setdefault("hr", []).append(Queued(event["id"], json.dumps(event), 1000))
    return outbox


async def test_commit_is_atomic_and_fenced(redis: Redis) -> None:
    store = PollStore(redis)
    leases = user_leases(redis, clock=Clock(0.010))
    await leases.add({MEMBER: 0})
    before = await redis_ms(redis)
    [lease] = await leases.claim(10)
    # the token: LEASED + when the lease runs out on Redis' clock, whatever the caller's says
    assert lease.due_at == 0 and lease.token - LEASED - LEASE_SECONDS * 1000 >= before
    assert lease.token - LEASED - LEASE_SECONDS * 1000 <= await redis_ms(redis)
    assert (lease.member, lease.account_id, lease.user_id) == (MEMBER, "acc:1", "u/1")
    assert await leases.claim(10) == []

    # a stale token (another process took the user over) writes nothing at all
    outbox = an_outbox()
    snapshots = {c.record_id: c.snapshot for c in outbox.changes}
    stale = await store.commit(
        "acc:1",
        "u/1",
        outbox,
        token=lease.token - 1,
        outcome=EndLease(90.0),
        state=ReadState(watermark_ms=1),
        snapshots=snapshots,
    )
    assert stale is None
    assert await redis.exists(keys.snapshots("acc:1", "u/1"), keys.user_state("acc:1", "u/1")) == 0
    assert await redis.zcard(HR.due) == 0

    ok = await store.commit(
        "acc:1",
        "u/1",
        an_outbox(),
        token=lease.token,
        outcome=EndLease(90.0),
        state=ReadState(watermark_ms=1, baselined=True),
        snapshots=snapshots,
    )
    assert ok == 90_000  # the score written: the lease ended
    stored = await store.load_user("acc:1", "u/1", ONE_A_SECOND)
    assert stored.snapshots == {"a1": Snapshot(2, {"id": "a1", "progress": 10})}
    assert stored.state == ReadState(watermark_ms=1, baselined=True)
    assert stored.permit_granted  # the first request's permit came with the state
    rate = SharedLimiter(redis).rate(ONE_A_SECOND)
    assert await rate.try_acquire() > 0.9  # 1/s: spent
    assert not (await store.load_user("acc:1", "u/1", ONE_A_SECOND)).permit_granted
    assert await redis.zscore(keys.POLL_DUE, MEMBER) == 90_000
    assert await redis.zcard(HR.due) == 2  # updated + progress_changed

    # the same change committed again (a poll replayed after a crash) is queued once
    again = await store.commit("acc:1", "u/1", an_outbox(), token=None)
    assert again == 0 and await redis.zcard(HR.due) == 2


async def test_members_claimed_first_go_before_a_backlog_due_earlier(redis: Redis) -> None:
    """The feeds read first are claimed before others due long before them, if due."""
    leases = user_leases(redis, clock=Clock(100.0))
    early, late, later = (keys.user_member("acc_1", f"u_{n}") for n in (1, 2, 3))
    await leases.add({early: 1.0, late: 90.0, later: 200.0})
    [first] = await leases.claim(1, first=[later, late])  # `later` is not due yet
    assert (first.member, first.due_at) == (late, 90.0)
    assert [lease.member for lease in await leases.claim(5, first=[late])] == [early]


async def test_a_heartbeat_extends_every_lease_held_in_one_call_and_reports_those_lost(
    redis: Redis,
) -> None:
    """The heartbeat keeps a process's running leases; one taken over elsewhere (this
    process stalled past it) is reported lost and left to its new holder, and one whose
    commit is under way (its lock held) is left to that commit."""
    leases = user_leases(redis)
    members = [keys.user_member("acc_1", f"u_{n}") for n in (1, 2, 3)]
    await leases.add({member: 0 for member in members})
    kept, lost, committing = await leases.claim(3)
    await redis.zadd(keys.POLL_DUE, {lost.member: lost.token + 1})  # claimed elsewhere
    await asyncio.sleep(0.002)  # Redis' clock moves on: the extension has another token
    before = kept.token
    async with committing.lock:
        assert await leases.extend_all([kept, lost, committing]) == [lost]
    assert kept.token > before and committing.token == before
    scores = dict(await redis.zrange(keys.POLL_DUE, 0, -1, withscores=True))
    assert scores[kept.member] == kept.token
    assert scores[lost.member] == lost.token + 1  # its new holder's, untouched
    assert scores[committing.member] == before


async def test_a_poll_lease_is_extended_released_and_handed_back_only_by_its_holder(
    redis: Redis,
) -> None:
    clock = Clock(100.0)
    leases, store = user_leases(redis, clock=clock), PollStore(redis)
    await leases.add({MEMBER: 0})
    [lease] = await leases.claim(1)
    first = lease.token
    await asyncio.sleep(0.002)  # Redis' clock moves on: the extension has another token
    before = await redis_ms(redis)
    assert await leases.extend(lease)
    assert before <= lease.token - LEASED - LEASE_SECONDS * 1000 <= await redis_ms(redis)
    late = dataclasses.replace(lease, token=first)  # its holder's view before the extension
    assert not await leases.release(late, EndLease(0.001), ReadState(failures=9))
    assert await redis.zscore(keys.POLL_DUE, MEMBER) == lease.token
    assert not await redis.exists(keys.user_state("acc:1", "u/1"))

    failed = ReadState(failures=1, last_error="upstream answered 500")
    assert await leases.release(lease, EndLease(200.0), failed)
    assert await redis.zscore(keys.POLL_DUE, MEMBER) == 200_000
    assert await store.user_state("acc:1", "u/1") == failed
    assert not await leases.extend(lease)  # released: no longer its lease

    clock.advance(100)  # due again; claimed, then handed back: due at once, for anyone
    [again] = await leases.claim(1)
    assert await leases.hand_back(again)
    assert await redis.zscore(keys.POLL_DUE, MEMBER) == 200_000


async def test_two_processes_never_claim_the_same_user(
    redis: Redis, redis_server: RedisServer
) -> None:
    other = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        a, b = user_leases(redis), user_leases(other)
        await a.add({f"acc:u{n}": 0 for n in range(200)})
        claims = await asyncio.gather(*[s.claim(7) for _ in range(20) for s in (a, b)])
        flat = [lease.member for batch in claims for lease in batch]
        assert len(flat) == len(set(flat)) == 200
    finally:
        await other.aclose()


async def test_a_process_whose_clock_runs_ahead_takes_no_live_lease(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Whether a lease holds is judged on Redis' clock: a process 40 s ahead (beyond every
    15 s lease as its holder's clock sees it) takes none of the live ones, users or events,
    and the holders' writes go through. When a member is due stays on each process's clock:
    one ahead claims a due member early, which is all its clock changes."""
    now = time.time()
    other = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        here, ahead = (
            user_leases(redis, clock=Clock(now)),
            user_leases(other, clock=Clock(now + 40)),
        )
        await here.add({f"acc:u{n}": now - 1 for n in range(3)})
        held = await here.claim(10)
        assert len(held) == 3
        assert await ahead.claim(10) == []
        assert all([await here.extend(lease) for lease in held])

        await PollStore(redis).commit("acc:1", "u/1", an_outbox(), token=None)
        queue, queue_ahead = EventQueue(redis), EventQueue(other)
        sending = await queue.claim("hr", now=now, seconds=LEASE_SECONDS, limit=10)
        assert len(sending) == 2
        assert await queue_ahead.claim("hr", now=now + 40, seconds=LEASE_SECONDS, limit=10) == []
        assert await queue.ack_many("hr", sending) == [True, True]

        # released to be due in 20 s: due at once for the process 40 s ahead, not here
        assert await here.release(held[0], EndLease(now + 20))
        assert await here.claim(10) == []
        assert [lease.member for lease in await ahead.claim(10)] == [held[0].member]
    finally:
        await other.aclose()


async def test_queue_lease_ack_retry_dead_and_replay(redis: Redis) -> None:
    queue = EventQueue(redis)
    store = PollStore(redis)
    await store.commit("acc:1", "u/1", an_outbox(), token=None)
    # long enough that the next claim, even on a loaded machine, comes before it runs out
    first = await queue.claim("hr", now=2.0, seconds=0.5, limit=1)
    assert len(first) == 1 and first[0].meta.attempts == 0
    # its lease has not run out: nobody else gets it; once it has (on Redis' clock, whatever
    # the claimant's says), it is claimed again
    rest = await queue.claim("hr", now=2.0, seconds=LEASE_SECONDS, limit=10)
    assert [e.event_id for e in rest] != [first[0].event_id] and len(rest) == 1
    await asyncio.sleep(0.55)  # Redis' clock passes the first claim's 0.5 s
    again = await queue.claim("hr", now=2.0, seconds=LEASE_SECONDS, limit=10)
    assert [e.event_id for e in again] == [first[0].event_id]
    # the first claimant lost its lease: its ack changes nothing
    assert await queue.ack("hr", first[0]) is False
    assert await queue.depth("hr") == 2
    assert await queue.ack("hr", rest[0]) is True
    assert await queue.depth("hr") == 1

    event = again[0]
    event.meta.attempts, event.meta.last_error = 1, "HTTP 500"
    assert await queue.reschedule("hr", event, due_ms=5000)
    [retried] = await queue.claim("hr", now=5.0, seconds=LEASE_SECONDS, limit=10)
    assert retried.meta.attempts == 1 and retried.meta.last_error == "HTTP 500"
    assert await queue.dead_letter("hr", retried, now_ms=5500)
    assert await queue.depth("hr") == 0 and await queue.dead_count("hr") == 1
    [letter] = await queue.dead_letters("hr")
    assert letter.event_id == retried.event_id and letter.last_error == "HTTP 500"
    assert letter.event["id"] == retried.event_id

    assert await queue.replay("hr", now_ms=7000) == 1
    assert await queue.dead_count("hr") == 0
    replayed = await queue.claim("hr", now=7.0, seconds=LEASE_SECONDS, limit=10)
    assert [e.event_id for e in replayed] == [retried.event_id]
    assert all(await asyncio.gather(*[queue.ack("hr", e) for e in replayed]))
    assert await queue.depth("hr") == 0
    assert await redis.hlen(HR.body) == 0 and await redis.hlen(HR.meta) == 0


async def test_a_claimed_event_carries_the_bytes_queued_and_its_head(redis: Redis) -> None:
    """What a sender signs and POSTs is the body as committed, byte for byte (text beyond
    ASCII included), and the event's type and timestamp come with it: also for a body in
    another form (a tool's), and after Redis lost its scripts (a restart, a failover)."""
    outbox = an_outbox()
    event_id, sent, due, _ = outbox.events["hr"][0]
    event = json.loads(sent)
    event["data"]["note"] = "café ☕ \u2028 \U0001f680"
    ours = jsonfmt.dumps_bytes(event)
    tools = json.dumps({"timestamp": "2026-01-02T03:04:05Z", "id": "evt_t", "type": "x.y"})
    outbox.events["hr"] = [Queued(event_id, ours, due), Queued("evt_t", tools, due)]
    await PollStore(redis).commit("acc:1", "u/1", outbox, token=None)
    await redis.script_flush()
    claimed = {e.event_id: e for e in await EventQueue(redis).claim("hr", 2.0, 5.0, 10)}
    assert claimed[event_id].body == ours
    assert claimed[event_id].head == (event["type"], event["timestamp"])
    assert claimed["evt_t"].body == tools.encode()
    assert claimed["evt_t"].head == ("x.y", "2026-01-02T03:04:05Z")


async def test_shared_limit_holds_across_clients(redis: Redis, redis_server: RedisServer) -> None:
    clients = [Redis.from_url(redis_server.url, decode_responses=True) for _ in range(3)]
    rates = [SharedLimiter(c).rate(RateLimit("test", per_second=20, burst=1)) for c in clients]
    granted = 0

    async def worker(rate: SharedRate) -> None:
        nonlocal granted
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            wait = await rate.try_acquire()
            if wait == 0:
                granted += 1
            else:
                await asyncio.sleep(wait)

    started_ms = await redis_ms(redis)
    try:
        await asyncio.gather(*[worker(rate) for rate in rates])
    finally:
        for client in clients:
            await client.aclose()
    # judged on Redis' clock, which the limiter runs on (a loaded machine delays when each
    # client learns of its grant, not when it was granted): three clients asking as fast as
    # told get 20/s between them, the burst of 1 and nothing more, and most of that
    seconds = (await redis_ms(redis) - started_ms) / 1000
    assert granted <= 1 + 20 * seconds
    assert granted >= 0.6 * 20 * seconds


async def test_a_yielding_request_leaves_half_the_burst_to_the_others(redis: Redis) -> None:
    """The key's limiter while some accounts' reads go first: the others' requests stop at
    half the burst, and the rest is there for the first at once."""
    rate = SharedLimiter(redis).rate(RateLimit("upstream", 1, 11))  # a burst of 11, then 1/s
    granted = 0
    while await rate.try_acquire(yielding=True) == 0:
        granted += 1
    assert granted == 6  # the first permit, then half of the 10 the burst adds
    for _ in range(5):
        assert await rate.try_acquire() == 0
    assert await rate.try_acquire() > 0.9  # spent: the burst holds for everyone


async def test_pause_holds_every_limiter_until_it_runs_out(redis: Redis) -> None:
    limiter = SharedLimiter(redis)
    upstream = limiter.rate(RateLimit("upstream", 100, 10, pause_key=keys.UPSTREAM_PAUSE))
    other = SharedLimiter(redis).rate(upstream.limit)  # another process, same key
    await upstream.pause(0.4)
    await other.pause(0.1)  # a shorter pause never shortens it
    wait = await other.try_acquire()
    assert 0.3 < wait <= 0.4
    await asyncio.sleep(wait)
    assert await upstream.try_acquire() == 0


async def test_snapshots_round_trip_compactly(redis: Redis) -> None:
    """A user's snapshots are one compressed value; odd records come back exactly."""
    store = PollStore(redis)
    records = {
        f"a{n}": Snapshot(n, {"id": f"a{n}", "progress": n, "title": "Sécurité 🔒", "n": 2**70})
        for n in range(1, 30)
    }
    records["gone"] = Snapshot(7, None)  # a tombstone
    await store.commit("acc:1", "u/1", Outbox(), token=None, snapshots=records)
    assert (await store.load_user("acc:1", "u/1", ONE_A_SECOND)).snapshots == records
    assert await store.user_snapshots("acc:1", "u/1") == records
    assert await store.user_snapshots("acc:1", "u/9") == {}
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
    state = await store.load_user("acc:1", "u/1", ONE_A_SECOND)
    assert state.snapshots == {"a1": Snapshot(3, old)} and state.legacy
    assert await store.user_snapshots("acc:1", "u/1") == {"a1": Snapshot(3, old)}
    await store.commit("acc:1", "u/1", Outbox(), token=None, snapshots=state.snapshots)
    assert await redis.exists(legacy) == 0
    again = await store.load_user("acc:1", "u/1", ONE_A_SECOND)
    assert again.snapshots == {"a1": Snapshot(3, old)} and not again.legacy


async def test_every_lua_script_says_what_it_takes_and_compiles(redis: Redis) -> None:
    """Each script opens with its KEYS and ARGV; with its library parts in place, Redis
    compiles it (SCRIPT LOAD), so a broken include fails here, not in production."""
    from importlib.resources import files

    from service.store.scripts import lua_source

    folder = files("service.store").joinpath("lua")
    names = [p.name[:-4] for p in folder.iterdir()]
    libraries = {"fence", "lease", "enqueue", "gcra", "commit_parts", "log"}
    assert libraries < set(names)
    for name in sorted(set(names) - libraries):
        lines = folder.joinpath(f"{name}.lua").read_text().splitlines()
        header = "\n".join(itertools.takewhile(lambda line: line.startswith("--"), lines))
        assert "-- KEYS:" in header and "-- ARGV:" in header, name
        assert "--!include" not in lua_source(name)
        assert await redis.script_load(lua_source(name)), name


async def test_a_heartbeat_after_the_last_commit_leaves_the_next_due_time(
    redis: Redis, redis_server: RedisServer, lms: tuple[SimLMS, str]
) -> None:
    """A heartbeat that waited for the lock of a poll's last commit must not take the user's
    next due time for a lease (it would poll the user again a lease later)."""
    sim, lms_url = lms
    sim.put_assignment(ACCOUNT, "u_1", {"id": "a1"})
    settings = make_settings(redis_server.url, lms_url, [], ["u_1"], polling={"interval": "5m"})
    store, leases = PollStore(redis), user_leases(redis)
    budget = api_key_rate(settings.stackone.max_requests_per_minute)
    member = keys.user_member(ACCOUNT, "u_1")
    await leases.add({member: 0})
    [lease] = await leases.claim(1)
    async with aiohttp.ClientSession() as session:
        client = StackOneClient(
            session, settings.stackone, SharedLimiter(redis).rate(budget), Metrics()
        )
        await Poller(store, client, budget, settings, Metrics()).poll(lease)
    next_due = await redis.zscore(keys.POLL_DUE, member)
    assert next_due is not None and next_due > (time.time() + 200) * 1000  # an interval on
    assert not await leases.extend(lease)
    assert not await leases.release(lease, EndLease(0.0))
    assert await redis.zscore(keys.POLL_DUE, member) == next_due


async def test_a_change_fades_over_the_plans_intervals_not_the_configured_ones(
    redis: Redis, redis_server: RedisServer, lms: tuple[SimLMS, str]
) -> None:
    """`adaptive` with a budget that stretches every per-user interval (1 s configured, 10 s
    planned): a change weighs on the user's cadence for RATE_MEMORY of the intervals it is
    really polled at; counted in configured ones, it would fade ten times too fast."""
    sim, lms_url = lms
    sim.put_assignment(ACCOUNT, "u_1", {"id": "a1"})
    polling = {"interval": "1s", "adaptive": True, "min_interval": "1s"}
    settings = make_settings(redis_server.url, lms_url, [], ["u_1"], polling=polling)
    planned = dataclasses.replace(ConfiguredCadence.of(settings.polling), interval=10.0)
    clock = Clock()
    store, leases = PollStore(redis), user_leases(redis, clock=clock)
    budget = api_key_rate(settings.stackone.max_requests_per_minute)
    member = keys.user_member(ACCOUNT, "u_1")
    await leases.add({member: 0})
    async with aiohttp.ClientSession() as session:
        client = StackOneClient(
            session, settings.stackone, SharedLimiter(redis).rate(budget), Metrics()
        )
        poller = Poller(store, client, budget, settings, Metrics(), cadence=planned, clock=clock)

        async def poll_after(seconds: float) -> float | None:
            clock.advance(seconds)
            await redis.zadd(keys.POLL_DUE, {member: 0}, xx=True)  # due now
            [lease] = await leases.claim(1)
            await poller.poll(lease)
            return (await leases.state(member)).change_rate

        await poll_after(0)  # the baseline
        sim.progress(ACCOUNT, "u_1", "a1", 50)
        assert await poll_after(1) == 1.0  # one change
        faded = await poll_after(10)  # one planned interval later, nothing new
    assert faded == pytest.approx(math.exp(-1 / RATE_MEMORY))


async def test_a_heartbeat_renews_event_claims_without_fencing_out_an_ack_under_way(
    redis: Redis, redis_server: RedisServer
) -> None:
    """A worker's heartbeat gives every claim it holds a new token. An ack sent at the same
    moment (on another connection) with the old token found its claim lost, and the event,
    delivered, went out again once the claim ran out. Acks and renewals take turns."""
    now = time.time()
    await PollStore(redis).commit("acc:1", "u/1", an_outbox(), token=None)
    acking = Redis.from_url(redis_server.url, decode_responses=True)
    try:
        queue = EventQueue(redis)
        held = await queue.claim("hr", now=now, seconds=LEASE_SECONDS, limit=10)
        assert len(held) == 2
        first_tokens = [event.token for event in held]
        queue._ack = type(queue._ack)(acking)  # the ack's own connection, as a pool would
        renewal = asyncio.create_task(queue.extend_held("hr", held, now, LEASE_SECONDS * 2))
        await asyncio.sleep(0)  # the renewal is under way
        assert await queue.ack_many("hr", held) == [True, True]
        assert await renewal == []
        assert [event.token for event in held] != first_tokens  # renewed, then acked
        assert await redis.zcard(keys.EndpointKeys("hr").due) == 0
    finally:
        await acking.aclose()


async def test_a_write_that_met_this_process_claiming_the_event_again_is_made_with_that_claim(
    redis: Redis,
) -> None:
    """A claim ran out and this very process claimed the event again (Handoff.offer gives the
    held event the new token) while its ack was on the way with the old one: the ack failed,
    and the delivered event went out once more when the new claim ran out. The claim is this
    process's in both cases: the write is made again with the new token."""
    now = time.time()
    await PollStore(redis).commit("acc:1", "u/1", an_outbox(), token=None)
    queue = EventQueue(redis)
    held = await queue.claim("hr", now=now, seconds=0.3, limit=10)
    await asyncio.sleep(0.5)  # the claims run out
    real_ack = queue._ack

    async def ack_meeting_a_new_claim(endpoint_id: str, events: list[Any]) -> list[bool]:
        queue._ack = real_ack
        again = {e.event_id: e for e in await queue.claim("hr", now, LEASE_SECONDS, 10)}
        done = await real_ack(endpoint_id, events)  # made with the tokens it was given
        for event in events:  # as Handoff.offer does, while the ack was on its way
            event.token = again[event.event_id].token
        return done

    queue._ack = ack_meeting_a_new_claim  # type: ignore[assignment]
    assert await queue.ack_many("hr", held) == [True, True]
    assert await redis.zcard(keys.EndpointKeys("hr").due) == 0
