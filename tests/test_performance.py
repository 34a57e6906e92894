"""Coarse, exact guards of what the benchmark measures (the timings stay in `lms-webhooks bench`):
an idle poll's cost in requests and round trips, the delivery concurrency bound, batched acks,
the poll cadence, and the bench command itself."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.bench.load import ACCOUNT as BENCH_ACCOUNT
from service.bench.load import change_steadily, owner_of, seed_users, skewed_changes
from service.bench.roundtrips import poll_cost
from service.bench.scenarios import delivery_figures, first_news
from service.changes.outbox import Outbox, Queued, RoutedEvents
from service.delivery.acks import AckBatcher
from service.reading.plan import next_due
from service.sim.lms import SimLMS, iso_ms
from service.sim.receiver import Answer, Receiver
from service.sim.records import remote_user_id
from service.store import keys
from service.store.polls import PollStore
from service.store.queue import EventQueue
from tests.helpers import (
    ACCOUNT,
    driven,
    endpoint,
    leases_run_out,
    make_settings,
    seed_user,
    wait_until,
)
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
BENCH = (sys.executable, "-m", "service", "bench")


async def test_an_idle_poll_costs_one_request_and_two_round_trips(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    sim, lms_url = lms
    an_hour_ago = iso_ms(sim.clock() - 3600)  # long before the overlap: read once, not again
    for n in range(1, 11):
        sim.put_assignment(ACCOUNT, "u_1", {"id": f"u_1_a{n}", "updated_at": an_hour_ago})
    settings = make_settings(redis_server.url, lms_url, [], ["u_1"], stackone={"page_size": 100})
    await poll_cost(redis_server.url, settings, ACCOUNT, "u_1")  # scripts loaded, baseline
    before = len(sim.requests)
    (_, _), (trips, idle) = await poll_cost(redis_server.url, settings, ACCOUNT, "u_1")
    assert len(sim.requests) - before == 2  # the first poll of the new client, then the idle one
    assert idle.changes == 0 and idle.pages == 1
    assert trips == 2  # the state with the upstream permit, then the commit

    # a change on the one page: still two
    (_, _), (trips, changed) = await poll_cost(
        redis_server.url,
        settings,
        ACCOUNT,
        "u_1",
        before_second=lambda: sim.progress(ACCOUNT, "u_1", "u_1_a3", 50),
    )
    assert changed.changes == 1 and trips == 2


async def test_delivery_never_exceeds_the_endpoint_concurrency(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    rx.default_answer = Answer(status=204, delay=0.2)
    seed_user(sim, "u_1", 12)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=3)],
        ["u_1"],
        polling={"interval": "200ms", "emit_on_first_sync": True},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
    assert len({e.webhook_id for e in rx.events}) == 12
    starts = sorted(e.received_at for e in rx.received)
    # a request is open from its arrival until the answer 0.2 s later
    most = max(sum(1 for s in starts if s <= t < s + 0.19) for t in starts)
    assert most == 3


async def test_acks_sent_together_are_fenced_one_by_one(redis: Redis) -> None:
    store, queue = PollStore(redis), EventQueue(redis)
    events: RoutedEvents = {
        "hr": [Queued(f"evt_{n}", json.dumps({"id": f"evt_{n}"}), 0) for n in range(3)]
    }
    await store.commit(ACCOUNT, "u", Outbox(events=dict(events)), token=None)
    claimed = await queue.claim("hr", now=0.01, seconds=1.0, limit=3)
    assert len(claimed) == 3
    claimed[1].token = 999  # as if its lease had run out and another worker took it over
    done: list[tuple[str, bool]] = []
    batcher = AckBatcher(queue, "hr", lambda e, acked: done.append((e.event_id, acked)), batch=3)
    for event in claimed:
        batcher.add(event)  # the third fills the batch: sent at once, nobody waits
    await batcher.flush()
    assert sorted(done) == [("evt_0", True), ("evt_1", False), ("evt_2", True)]
    assert await redis.zrange(keys.EndpointKeys("hr").due, 0, -1) == ["evt_1"]

    await leases_run_out(redis)  # the lease the other worker took, as if it had died
    [again] = await queue.claim("hr", now=time.time() + 1, seconds=1.0, limit=1)
    batcher.add(again)  # alone, below a batch: it waits a few ms for company, no longer
    assert len(done) == 3
    await wait_until(lambda: len(done) == 4, 10, "the lone ack sent without a batch to fill")
    assert done[3:] == [("evt_1", True)]
    assert await redis.zcard(keys.EndpointKeys("hr").due) == 0


@pytest.mark.parametrize(
    ("due_at", "claimed_at", "now", "expected"),
    [
        (100.0, 100.2, 100.5, 110.0),  # claimed a little late: the cadence of due times holds
        (100.0, 100.2, 109.0, 110.0),  # a slow poll: still due an interval after it was due
        (100.0, 125.0, 126.0, 135.0),  # claimed far behind (a backlog): from the claim
        (0.0, 500.0, 500.3, 510.0),  # `poll now` made it due at 0: not due again at once
        (100.0, 100.2, 140.0, 140.0),  # never in the past
    ],
)
def test_the_next_poll_keeps_the_cadence_of_due_times(
    due_at: float, claimed_at: float, now: float, expected: float
) -> None:
    assert next_due(due_at, claimed_at, interval=10.0, now=now) == expected


async def test_reach_changes_are_the_records_seeded_and_counted_once_each() -> None:
    sim = SimLMS()
    seed_users(sim, 3, 2)  # u_1: a_1, a_2; u_2: a_3, a_4; u_3: a_5, a_6
    users = sim.accounts[BENCH_ACCOUNT]
    assert owner_of(4, 2) == "u_2" and "a_4" in users["u_2"]
    assert {r["remote_user_id"] for r in users["u_3"].values()} == {remote_user_id("u_3")}
    made = await change_steadily(sim, [6, 1], 2, per_second=1000.0)
    assert [aid for aid, _ in made] == ["a_6", "a_1"]
    for aid, updated_at in made:
        assert users[owner_of(int(aid[2:]), 2)][aid]["updated_at"] == updated_at

    # a change counts once, however many events report it; one never received is later
    # than any that was, so p99 is not reached when 1 change in 2 is missing
    first, _ = made
    figures = delivery_figures(made, {first: made[first] + 2.0, ("a_9", "x"): 0.0})
    assert figures["changes_delivered"] == 1 and figures["undelivered"] == 1
    assert figures["p50_seconds"] == 2.0 and figures["p99_seconds"] is None
    assert figures["unexpected_changes_received"] == 1


async def test_adaptive_changes_are_skewed_made_alike_in_twins_and_told_by_later_ones() -> None:
    serials, busy = skewed_changes(random.Random(1), 100, 5, 2000, busy=0.1, busy_share=0.9)
    per_user = Counter(owner_of(serial, 5) for serial in serials)
    assert len(busy) == 10
    assert 0.87 < sum(per_user[u] for u in busy) / 2000 < 0.93
    assert per_user.most_common(1)[0][0] in busy  # Zipf: the busiest makes 1/H(10) ≈ 34%
    assert per_user.most_common(1)[0][1] > 2000 * 0.9 * 0.3

    sim, twin = SimLMS(), SimLMS()
    seed_users(sim, 2, 5, twins=[twin])
    made = await change_steadily(sim, [3, 3], 5, per_second=1000.0, twins=[twin])
    assert twin.accounts == sim.accounts  # the same records, the same updated_at
    # a_3 changed twice before a read: the later version tells both changes
    first, second = made
    assert first[0] == second[0] == "a_3" and first[1] < second[1]
    assert first_news(made, {second: 7.0}) == {first: 7.0, second: 7.0}
    assert first_news(made, {first: 5.0}) == {first: 5.0}  # the later one not told yet


@pytest.mark.slow
def test_bench_command_reports_figures_targets_and_the_machine(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [*BENCH, "--scenario", "detection", "--scale", "0.02", "--output", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    report = json.loads(out.read_text())
    assert json.loads(run.stdout) == report
    assert report["machine"]["cpus"] >= 1 and report["versions"]["python"]
    detection = report["scenarios"]["detection"]
    assert detection["figures"]["changed_assignments"] == 1000  # 10 users × 100, all detected
    assert detection["figures"]["changes_per_second"] > 0
    [throughput, _] = detection["targets"]
    assert throughput["target"] == 20_000 and isinstance(throughput["met"], bool)
    assert "changes_per_second" in run.stderr  # the human table

    wrong = subprocess.run(
        [*BENCH, "--scenario", "nope"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert wrong.returncode == 2 and "unknown scenario" in wrong.stderr
    too_big = subprocess.run(
        [*BENCH, "--scale", "2"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert too_big.returncode == 2 and "--scale must be in (0, 1]" in too_big.stderr
