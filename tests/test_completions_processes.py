"""Completions in real `lms-webhooks run` processes, through the account feed (acc_1) and
per user (acc_2): kill -9 in the middle of a completions read loses nothing and re-sends
with the same ids; two processes send each completion change once."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from service.store import keys
from tests.helpers import leases_run_out, queue_drained, run_processes, wait_until
from tests.redis_server import RedisServer

pytestmark = pytest.mark.slow

CONFIG = "config/test-completions.yaml"
ACCOUNTS = ("acc_1", "acc_2")  # the feed's, the per-user strategy's
USERS = ("u_1", "u_2")


def seed_completions(sim: SimLMS, count: int) -> None:
    """u_1 and u_2 in each account, each with one assignment and `count` completions."""
    for account in ACCOUNTS:
        for user in USERS:
            sim.put_assignment(account, user, {"id": f"{account}_{user}_a1"})
            for n in range(1, count + 1):
                sim.put_completion(account, user, {"id": f"{account}_{user}_c{n}"})


async def all_baselined(redis: Redis) -> bool:
    flags = [
        await redis.hget(keys.user_state(account, user), field)
        for account in ACCOUNTS
        for user in USERS
        for field in ("baselined", "completions.baselined")
    ]
    return flags == ["1"] * len(flags)


@pytest.mark.parametrize(
    ("account", "path"),
    [("acc_1", "/unified/lms/completions"), ("acc_2", "/unified/lms/users/u_1/completions")],
)
async def test_kill_in_the_middle_of_a_completions_read(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
    account: str,
    path: str,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_completions(sim, 3)  # page_size 2: a user's 3 completions are 2 pages
    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, config=CONFIG) as processes:
        [process] = processes
        await wait_until(lambda: all_baselined(redis), 20, "every user's baselines")
        sim.faults.page_delays = {1: 60.0}  # the second page of every listing hangs
        for user in USERS:
            for n in (1, 2, 3):
                sim.update_completion(account, user, f"{account}_{user}_c{n}", score=n)
        sim.clear_requests()
        await wait_until(
            lambda: any(
                r.path == path and r.account_id == account and "next" in r.query
                for r in sim.requests
            ),
            20,
            f"{account}'s completions read reached page 2",
        )
        process.kill()
        assert [e for e in rx.events if e.data["account_id"] == account] == []

        sim.faults.page_delays = {}
        await leases_run_out(redis)
        await redis.zadd(keys.FEED_DUE, {keys.account_member(a): 0 for a in ACCOUNTS}, xx=True)
        process.start()  # read again from the watermarks
        await rx.wait_for(6, 40)  # 6 completions changed, one `completion.updated` each
        await queue_drained(redis)
    assert processes.codes == [0]
    ids = [e.webhook_id for e in rx.events]
    assert len(ids) == 6 == len(set(ids))
    assert {e.type for e in rx.events} == {ev.COMPLETION_UPDATED}
    assert {e.data["completion_id"] for e in rx.events} == {
        f"{account}_{user}_c{n}" for user in USERS for n in (1, 2, 3)
    }


async def test_two_processes_send_each_completion_change_once(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_completions(sim, 1)
    with run_processes(redis_server.url, lms_url, rx_url, tmp_path, 2, config=CONFIG) as processes:
        await wait_until(lambda: all_baselined(redis), 20, "every user's baselines")
        for account in ACCOUNTS:
            for user in USERS:
                sim.update_completion(account, user, f"{account}_{user}_c1", score=1)
                sim.put_completion(account, user, {"id": f"{account}_{user}_new"})
                sim.update_assignment(account, user, f"{account}_{user}_a1", x_round=1)
        await rx.wait_for(12, 30)  # per user: completion updated and created, assignment updated
        await queue_drained(redis)
    assert processes.codes == [0, 0]
    assert len(rx.received) == 12 == len({r.webhook_id for r in rx.received})
    kinds = sorted(e.type for e in rx.events)
    assert kinds == sorted([ev.COMPLETION_CREATED, ev.COMPLETION_UPDATED, ev.UPDATED] * 4)
    logs = processes.logs()
    assert '"poll_crashed"' not in logs and "Traceback" not in logs
