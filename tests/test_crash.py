"""kill -9 of a real `lms-webhooks run` process loses nothing, and redelivery keeps ids."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver, hang
from service.store import keys
from service.store.scripts import LEASED
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    SECRET,
    RunProcess,
    answer_only_the_restarted,
    baselined,
    leases_run_out,
    queue_drained,
    run_processes,
    seed,
    wait_until,
)
from tests.redis_server import RedisServer

HR_DUE = keys.EndpointKeys("hr").due

pytestmark = pytest.mark.slow


async def test_kill_between_commit_and_delivery(
    redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], run_process: RunProcess
) -> None:
    sim, _ = lms
    rx, _ = receiver
    seed(sim, 2)
    run_process.start()
    await wait_until(lambda: baselined(redis, "u_1"), 20, "baseline")

    rx.default_answer = hang(60)  # committed events go out, and never get their answer
    sim.progress(ACCOUNT, "u_1", "a1", 100)
    await wait_until(lambda: len({r.webhook_id for r in rx.received}) >= 2, 20, "attempts")
    run_process.kill()
    in_flight = {r.webhook_id for r in rx.received}
    assert await redis.zcard(HR_DUE) == 4  # updated, status, completed, progress

    answer_only_the_restarted(rx, run_process)
    await leases_run_out(redis)  # the dead process's claims: as if their time had passed
    run_process.start()  # the events go again
    await rx.wait_for(4, 30)
    await queue_drained(redis)
    assert run_process.stop() == 0
    delivered = {e.webhook_id: e for e in rx.events}
    assert len(delivered) == 4 == len(rx.events)
    assert in_flight <= delivered.keys()  # redelivered with the webhook-id they first had
    assert {e.type for e in delivered.values()} == {
        ev.UPDATED,
        ev.STATUS_CHANGED,
        ev.COMPLETED,
        ev.PROGRESS_CHANGED,
    }
    assert await redis.zcard(HR_DUE) == 0
    log = run_process.log.read_text()
    assert "delivery_attempt" in log
    assert API_KEY not in log and SECRET not in log and SECRET[6:] not in log


async def test_kill_in_the_middle_of_a_poll(
    redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], run_process: RunProcess
) -> None:
    sim, _ = lms
    rx, _ = receiver
    seed(sim, 5)  # page_size 2 in config/test.yaml: 3 pages
    run_process.start()
    await wait_until(lambda: baselined(redis, "u_1"), 20, "baseline")

    sim.faults.page_delays = {1: 60.0}  # the second page of every listing hangs
    for n in range(1, 6):
        sim.progress(ACCOUNT, "u_1", f"a{n}", 30)
    sim.clear_requests()
    await wait_until(
        lambda: any("next" in r.query and r.user_id == "u_1" for r in sim.requests),
        20,
        "the poll reached page 2",
    )
    run_process.kill()
    assert rx.received == [] and await redis.zcard(HR_DUE) == 0  # nothing committed

    sim.faults.page_delays = {}
    await leases_run_out(redis)  # u_1's lease, as if its 15 s had passed
    run_process.start()  # the poll runs again from the watermark
    await rx.wait_for(15, 40)  # 5 assignments × (updated, status_changed, progress_changed)
    await queue_drained(redis)  # nothing else is on its way
    assert run_process.stop() == 0
    assert len(rx.events) == 15 == len({e.webhook_id for e in rx.events})
    per_assignment = {e.data["assignment_id"] for e in rx.events}
    assert per_assignment == {f"a{n}" for n in range(1, 6)}


async def test_two_processes_share_the_endpoint_rate_and_send_each_event_once(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 15)
    with run_processes(
        redis_server.url, lms_url, rx_url, tmp_path, 2, ENDPOINT_RATE="5"
    ) as processes:
        await wait_until(lambda: baselined(redis, "u_1"), 20, "baseline")
        for n in range(1, 16):
            sim.update_assignment(ACCOUNT, "u_1", f"a{n}", x_round=1)  # 15 `updated` events
        await rx.wait_for(15, 30)
        await queue_drained(redis)  # nothing else is on its way
    assert processes.codes == [0, 0]
    assert len(rx.received) == 15 == len({r.webhook_id for r in rx.received})
    times = sorted(r.received_at for r in rx.received)
    for n, start in enumerate(times):  # any 2 s window: at most 5/s x 2 s, +1 for the edge
        assert sum(1 for t in times[n:] if t < start + 2.0) <= 11
    assert processes.logs().count('"delivery_attempt"') == 15


async def test_a_killed_processs_event_claims_are_taken_over_within_5_seconds(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    """Two processes deliver to a slow receiver (a second a webhook: slow, not failing, so
    no breaker opens), each holding a full round of claims (8 being sent, 8 waiting: 16 at
    most); one is killed (-9). Every event claimed at that moment is delivered within 5 s,
    not once a claim as long as the endpoint's timeout plus a margin has run out."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 10)

    async def more_claims_than() -> bool:
        return int(await redis.zcount(HR_DUE, LEASED, "+inf")) > 16

    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, 2) as (victim, _):
        await wait_until(lambda: baselined(redis, "u_1"), 20, "baseline")
        rx.default_answer = Answer(delay=1.0)
        for n in range(1, 11):
            sim.progress(ACCOUNT, "u_1", f"a{n}", 100)  # 40 events
        # more claims than one process holds: the victim holds some of them
        await wait_until(more_claims_than, 20, "both processes holding claims")
        victim.kill()
        killed_at = time.monotonic()
        leased = await redis.zrangebyscore(HR_DUE, LEASED, "+inf")
        rx.default_answer = Answer()

        async def delivered() -> bool:  # acknowledged: out of the queue
            return all(score is None for score in await redis.zmscore(HR_DUE, leased))

        await wait_until(delivered, 30, "every event claimed at the kill delivered")
        took = time.monotonic() - killed_at
    assert took <= 5.0, f"the killed process's claims outlived it: {took:.2f} s"
