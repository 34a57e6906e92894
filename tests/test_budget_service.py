"""The budget plan in the running service, on a real redis-server: an over-budget config is
stretched and says so; users added at run time change the plan at once; adaptive polls busy
users more often and idle ones within the bound, and reads a busy account's feed every
`account_interval` while quiet ones slow down, within the key's budget, and before a
backlog of quiet ones."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.config import Settings
from service.sim.lms import SimLMS
from service.sim.lms_state import ACCOUNT_ASSIGNMENTS_PATH
from service.sim.receiver import Receiver
from service.store import keys
from service.store.limits import api_key_rate
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    ROOT,
    Driven,
    as_json,
    driven,
    endpoint,
    make_settings,
    running,
    seed_user,
    wait_until,
)
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]


def user_polls(sim: SimLMS) -> Counter[str]:
    return Counter(r.user_id for r in sim.requests if r.user_id)


async def test_an_over_budget_config_is_stretched_and_says_so(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    users = [f"u_{n}" for n in range(1, 11)]
    for user in users:
        seed_user(sim, user, 1)
    # 10 users every 100 ms: 6,000 requests a minute; 97% of 600 are planned
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(receiver[1])],
        users,
        stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 600},
        polling={"interval": "100ms"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        budget = as_json(await service.service.operations.budget())
        assert budget["fits"] is False
        assert budget["needed_per_minute"] == 6000 and budget["allowed_per_minute"] == 582
        stretched = 0.1 * 6000 / 582  # 1.03 s
        assert budget["effective_interval_seconds"]["per_user"] == pytest.approx(stretched, 1e-3)
        metrics = service.service.metrics.render().decode()
        sim.clear_requests()
        for _ in range(2):  # 2.4 s: two polls a user on the plan, not twenty-four
            await service.step(1.2)
    assert "lms_webhooks_budget_needed_per_minute 6000.0" in metrics
    assert 'lms_webhooks_effective_interval_seconds{strategy="per_user"} 1.03' in metrics
    assert set(user_polls(sim).values()) == {2}


async def test_users_added_at_run_time_change_the_plan_without_a_restart(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    for n in range(1, 11):
        seed_user(sim, f"u_{n}", 1)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(receiver[1])],
        ["u_1", "u_2"],
        stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 1500},
        polling={"interval": "100ms"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        assert (await service.service.operations.budget()).fits is True  # 1,200 of 1,455
        for n in range(3, 11):
            await service.service.operations.add_user(ACCOUNT, f"u_{n}")
        await service.step(0.0)
        budget = as_json(await service.service.operations.budget())
    assert budget["fits"] is False and budget["users"]["per_user"] == 10
    assert budget["effective_interval_seconds"]["per_user"] == pytest.approx(
        0.1 * 6000 / 1455, 1e-3
    )


async def test_adaptive_polls_busy_users_more_often_and_idle_ones_within_the_bound(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    users = [f"u_{n}" for n in range(1, 11)]
    for user in users:
        seed_user(sim, user, 2)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(receiver[1])],
        users,
        # the key's limiter runs on real time: a budget that never holds the test up
        stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 6000},
        polling={"interval": "4s", "adaptive": True, "min_interval": "1s"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        progress = 0
        for _ in range(3):  # u_1 busy from the start: its weight grows with each change
            for _ in range(8):
                progress += 1
                sim.progress(ACCOUNT, "u_1", "u_1_a1", progress)
                await service.step(0.5)
        budget = as_json(await service.service.operations.budget())
        sim.clear_requests()
        for _ in range(48):  # 24 s: 60 polls of the ten users at the uniform cadence
            progress += 1
            sim.progress(ACCOUNT, "u_1", "u_1_a1", progress)
            await service.step(0.5)
        requests = list(sim.requests)
    polls = Counter(r.user_id for r in requests)
    idle = [polls[user] for user in users[1:]]
    assert polls["u_1"] >= 3 * max(idle)  # the busy user: polled far more often
    assert polls["u_1"] <= 24 / 1.0 + 1  # never more often than min_interval
    bound = budget["adaptive"]["max_interval_seconds"]
    assert bound == 8.0  # twice the plan's interval
    for user in users[1:]:  # idle users: polled at least once per bound
        times = sorted(r.time for r in requests if r.user_id == user)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert times and max(gaps, default=0.0) <= bound + 0.5, (user, gaps)
    assert sum(polls.values()) <= 24 * 10 / 4 * 1.1  # about what uniform polling costs


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """`lms-webhooks check-config` on `config`, which passes (exit 0)."""
    proc = subprocess.run(
        [sys.executable, "-m", "service", "check-config", "--config", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def test_check_config_warns_when_the_cadences_do_not_fit(tmp_path: Path) -> None:
    users = ", ".join(f"u_{n}" for n in range(5000))
    config = tmp_path / "big.yaml"
    config.write_text(
        f"stackone: {{api_key: k}}\naccounts:\n  - {{account_id: a, users: [{users}]}}\n"
        "  - {account_id: b, users: all, strategy: account}\n"
    )
    proc = check_config(config)
    # 5,000 users every 5 m: 1,000 a minute, and a feed: 6; 970 planned of 1,000
    assert "warning: the configured cadences do not fit the budget" in proc.stderr
    assert "1006 requests a minute needed, 970 planned" in proc.stderr
    assert "per_user every 311.2" in proc.stderr and "account feeds every 10s" in proc.stderr


def test_check_config_says_how_adaptive_feeds_are_planned(tmp_path: Path) -> None:
    accounts = "".join(
        f"  - {{account_id: acc_{n}, users: [u_1], strategy: account}}\n" for n in range(300)
    )
    config = tmp_path / "tenants.yaml"
    config.write_text(
        f"stackone: {{api_key: k}}\naccounts:\n{accounts}polling: {{adaptive: true}}\n"
    )
    proc = check_config(config)
    # 300 feeds every 10 s: 1,800 a minute; 970 planned, 18.6 s each on average
    assert "1800 requests a minute needed, 970 planned" in proc.stderr
    assert (
        "account feeds every 10s (busy) to 100s (quiet) by activity, 18.6s on average "
        "(300 accounts)" in proc.stderr
    )


async def test_a_running_service_replans_as_soon_as_users_are_added(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    for n in range(1, 11):
        seed_user(sim, f"u_{n}", 1)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(receiver[1])],
        ["u_1", "u_2"],
        stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 120},
        polling={"interval": "2s"},
    )
    async with running(settings) as service:
        operations = service.operations

        async def users_planned() -> int:
            return int((await operations.budget()).users.per_user)

        await wait_until(lambda: users_planned(), 5, "the first plan")
        for n in range(3, 11):
            await operations.add_user(ACCOUNT, f"u_{n}")

        async def ten() -> bool:
            return await users_planned() == 10

        # well before the next periodic plan (every 30 s)
        await wait_until(ten, 5, "the plan to count the users added")
        assert (await operations.budget()).fits is False


async def test_full_resync_interval_zero_reads_the_feed_completely_every_time(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """`0` passed check-config's schema and the docs call it every poll a full read; the
    plan divided by it once a full read's pages were learned, and `run` ended there."""
    sim, lms_url = lms
    seed_user(sim, "u_1", 3)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(receiver[1])],
        [],
        accounts=[{"account_id": ACCOUNT, "users": ["u_1"], "strategy": "account"}],
        polling={"account_interval": "500ms", "full_resync_interval": 0},
    )
    async with driven(settings, sim) as service:
        await service.baseline()  # the first full read: its pages are learned
        sim.clear_requests()
        for _ in range(2):
            await service.step(0.5)  # the plan is derived again before each read
        budget = as_json(await service.service.operations.budget())
    feed_reads = [r for r in sim.requests if r.path == "/unified/lms/assignments"]
    assert len(feed_reads) >= 2
    assert not any("filter[updated_after]" in r.query for r in feed_reads)  # each one full
    assert budget["effective_interval_seconds"]["full_resync"] == 0
    assert budget["fits"] is True


FEEDS = [f"acc_{n}" for n in range(10)]
STEP = 0.5


def feed_reads(sim: SimLMS, after: float = 0.0) -> dict[str, list[float]]:
    """When each account's feed was read (first pages only), on the simulator's clock."""
    reads: dict[str, list[float]] = {}
    for r in sim.requests:
        if r.path == ACCOUNT_ASSIGNMENTS_PATH and "next" not in r.query and r.time > after:
            reads.setdefault(str(r.account_id), []).append(r.time)
    return reads


@pytest.fixture
def ten_feeds(
    redis_server: RedisServer,
    lms: tuple[SimLMS, str],
    receiver: Rx,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    """The settings of 10 feeds (FEEDS) of one user each, read every second, on a key of
    118 a minute, with `polling` on top."""
    sim, lms_url = lms
    for account in FEEDS:
        sim.put_assignment(account, "u_1", {"id": f"{account}_a1"})
        sim.progress(account, "u_1", f"{account}_a1", 0)
    # the key's limiter runs on real time, this test on its clock: the plan is what is
    # tested here, so the limiter gets the room of a key that never holds the test up
    monkeypatch.setattr("service.app.api_key_rate", lambda _: api_key_rate(60_000))

    def settings(**polling: object) -> Settings:
        return make_settings(
            redis_server.url,
            lms_url,
            [endpoint(receiver[1])],
            [],
            accounts=[{"account_id": a, "users": ["u_1"], "strategy": "account"} for a in FEEDS],
            stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 118},
            polling={
                "account_interval": "1s",
                "max_account_interval": "10s",
                "adaptive": True,
                **polling,
            },
        )

    return settings


async def test_adaptive_reads_a_busy_account_every_account_interval_and_quiet_ones_slower(
    ten_feeds: Callable[..., Settings], lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """10 feeds every second need 600 requests a minute; the key has 118 (114.5 planned).
    acc_0 changes every second: read every second; the nine quiet feeds pay for it, each
    read about every 10 s (max_account_interval). acc_5 then gets one change: the read
    that finds it makes the next come after account_interval, not 10 s."""
    sim, rx = lms[0], receiver[0]
    settings = ten_feeds()
    progress = 0

    async def seconds(service: Driven, count: int) -> None:
        """`count` seconds on, acc_0 changing each second."""
        nonlocal progress
        for _ in range(count):
            progress += 1
            sim.progress("acc_0", "u_1", "acc_0_a1", progress)
            for _ in range(round(1 / STEP)):
                await service.step(STEP)

    async with driven(settings, sim) as service:
        await service.step(0.0)  # every feed's first read: a silent baseline
        await seconds(service, 20)  # the plan learns who is busy
        start = service.clock()
        await seconds(service, 40)
        window = feed_reads(sim, start)
        budget = as_json(await service.service.operations.budget())
        rx.events.clear()
        sim.progress("acc_5", "u_1", "acc_5_a1", 50)
        changed = service.clock()
        await seconds(service, 15)
    assert budget["adaptive"]["accounts"] == {
        "min_interval_seconds": 1.0,
        "max_interval_seconds": 10.0,
    }
    assert budget["fits"] is False and budget["allowed_per_minute"] == 114.5
    busy = window.pop("acc_0")
    assert len(busy) >= 38  # every second (a step may come just after it is due)
    for account, times in window.items():  # the quiet: slowed down to the bound
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and all(9.0 <= gap <= 10.0 + STEP for gap in gaps), (account, gaps)
    # what the plan spends stays within the budget: 114.5 a minute, 76 in 40 s (a read per
    # feed more at most, for where the window cuts their cadences)
    total = len(busy) + sum(len(times) for times in window.values())
    assert 0.9 * 114.46 * 40 / 60 <= total <= 114.46 * 40 / 60 + len(FEEDS)
    # acc_5: the read that found its change, then the next after account_interval
    after = feed_reads(sim, changed)["acc_5"]
    assert len(after) >= 2 and after[1] - after[0] <= 1.0 + STEP, after
    assert {e.data["assignment_id"] for e in rx.events if e.data["user_id"] == "u_1"} >= {
        "acc_5_a1"
    }


async def test_adaptive_reads_the_busy_account_before_a_backlog_of_quiet_ones(
    ten_feeds: Callable[..., Settings], redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """With the key oversubscribed, the reads of the account read fastest go first: when
    the nine quiet feeds are all behind (due long ago, one read slot), acc_0's read, due
    just now, comes before theirs; every change is delivered."""
    sim, rx = lms[0], receiver[0]
    settings = ten_feeds(concurrency=1)
    async with driven(settings, sim) as service:
        await service.step(0.0)  # every feed's first read: a silent baseline
        for second in range(1, 21):  # acc_0 changes every second: the plan learns it
            sim.progress("acc_0", "u_1", "acc_0_a1", second)
            await service.step(1.0)
        quiet = [a for a in FEEDS if a != "acc_0"]
        for account in quiet:
            sim.progress(account, "u_1", f"{account}_a1", 50)
        sim.progress("acc_0", "u_1", "acc_0_a1", 50)
        behind = {keys.account_member(a): 1 for a in quiet}  # due long ago
        await redis.zadd(keys.FEED_DUE, behind | {keys.account_member("acc_0"): 2})
        rx.events.clear()
        before = len(sim.requests)
        await service.step(0.0)
    reads = [r.account_id for r in sim.requests[before:] if r.path == ACCOUNT_ASSIGNMENTS_PATH]
    assert reads[0] == "acc_0" and sorted(reads) == FEEDS
    assert {e.data["assignment_id"] for e in rx.events} == {f"{a}_a1" for a in FEEDS}
