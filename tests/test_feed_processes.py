"""Account feeds in real `lms-webhooks run` processes: kill -9 in the middle of a feed read
loses nothing and re-sends with the same ids; two processes share three accounts' feeds and
send each change once."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.sim.lms import SimLMS
from service.sim.receiver import Receiver, hang
from service.store import keys
from tests.helpers import (
    answer_only_the_restarted,
    leases_run_out,
    queue_drained,
    run_processes,
    wait_until,
)
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

CONFIG = "config/test-feed.yaml"
ACCOUNTS = ("acc_1", "acc_2", "acc_3")
FEED_PATH = "/unified/lms/assignments"


def seed_accounts(sim: SimLMS, count: int) -> None:
    """u_1 and u_2 in each account, each with `count` assignments not started."""
    for account in ACCOUNTS:
        for user in ("u_1", "u_2"):
            sim.add_user(account, user)
            for n in range(1, count + 1):
                sim.put_assignment(account, user, {"id": f"{account}_{user}_a{n}"})


async def all_baselined(redis: Redis) -> bool:
    states = [
        await redis.hget(keys.user_state(account, user), "baselined")
        for account in ACCOUNTS
        for user in ("u_1", "u_2")
    ]
    return states == ["1"] * len(states)


async def test_kill_in_the_middle_of_a_feed_read(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_accounts(sim, 2)  # page_size 2: acc_1's feed of 4 records is 2 pages, or more
    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, config=CONFIG) as processes:
        [process] = processes
        await wait_until(lambda: all_baselined(redis), 20, "every account's baseline")
        sim.faults.page_delays = {1: 60.0}  # the second page of every listing hangs
        for user in ("u_1", "u_2"):
            for n in (1, 2):
                sim.progress("acc_1", user, f"acc_1_{user}_a{n}", 100)
        sim.clear_requests()
        await wait_until(
            lambda: any(
                r.path == FEED_PATH and r.account_id == "acc_1" and "next" in r.query
                for r in sim.requests
            ),
            20,
            "acc_1's feed read reached page 2",
        )
        process.kill()
        acc_1 = [e for e in rx.events if e.data["account_id"] == "acc_1"]
        assert acc_1 == []  # the read was cut off before its commit

        sim.faults.page_delays = {}
        await leases_run_out(redis)
        await redis.zadd(keys.FEED_DUE, {keys.account_member(a): 0 for a in ACCOUNTS}, xx=True)
        process.start()  # the feed is read again from its watermark
        await rx.wait_for(4 * 4, 40)  # 4 completions × (updated, status, completed, progress)
        await queue_drained(redis)
    assert processes.codes == [0]
    ids = [e.webhook_id for e in rx.events]
    assert len(ids) == 16 == len(set(ids))
    assert {e.data["account_id"] for e in rx.events} == {"acc_1"}


async def test_two_processes_share_three_accounts_feeds(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_accounts(sim, 2)
    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, 2, config=CONFIG) as processes:
        await wait_until(lambda: all_baselined(redis), 20, "every account's baseline")
        for account in ACCOUNTS:
            for user in ("u_1", "u_2"):
                sim.update_assignment(account, user, f"{account}_{user}_a1", x_round=1)
        await rx.wait_for(6, 30)  # one `updated` per change
        await queue_drained(redis)
    assert processes.codes == [0, 0]
    assert len(rx.received) == 6 == len({r.webhook_id for r in rx.received})
    assert {(e.data["account_id"], e.data["user_id"]) for e in rx.events} == {
        (a, u) for a in ACCOUNTS for u in ("u_1", "u_2")
    }
    logs = processes.logs()
    assert '"poll_crashed"' not in logs and "Traceback" not in logs


async def test_kill_between_a_feed_commit_and_its_delivery_resends_the_same_ids(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_accounts(sim, 1)
    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, config=CONFIG) as processes:
        [process] = processes
        await wait_until(lambda: all_baselined(redis), 20, "every account's baseline")
        rx.default_answer = hang(60)  # the feed commits; its webhooks go and hang
        sim.progress("acc_2", "u_1", "acc_2_u_1_a1", 100)
        await wait_until(lambda: len({r.webhook_id for r in rx.received}) >= 2, 20, "attempts")
        process.kill()
        in_flight = {r.webhook_id for r in rx.received}
        assert await redis.zcard(keys.EndpointKeys("hr").due) == 4  # committed, not sent

        answer_only_the_restarted(rx, process)
        await leases_run_out(redis)
        process.start()
        await rx.wait_for(4, 30)
        await queue_drained(redis)
    assert processes.codes == [0]
    delivered = {e.webhook_id for e in rx.events}
    assert len(delivered) == 4 == len(rx.events)
    assert in_flight <= delivered  # sent again with the webhook-id they first had
