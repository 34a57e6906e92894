"""assignment.overdue end to end: once per due date, none when completed in time."""

from __future__ import annotations

import time

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.changes.detect import Snapshot
from service.changes.outbox import Outbox, OverdueWatch
from service.metrics import Metrics
from service.reading.overdue import OverdueWatcher
from service.sim.lms import SimLMS, iso_ms
from service.sim.receiver import Receiver
from service.store import keys
from service.store.polls import PollStore
from tests.helpers import ACCOUNT, driven, endpoint, make_settings, of_type, seed_user
from tests.redis_server import RedisServer


@pytest.mark.parametrize("strategy", ["per_user", "account"])
async def test_overdue_once_and_not_when_completed_first(
    strategy: str,
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=[{"account_id": ACCOUNT, "users": ["u_1"], "strategy": strategy}],
        polling={"account_interval": "500ms"},
    )
    async with driven(settings, sim) as service:
        seed_user(sim, "u_1", 2)
        due = iso_ms(service.clock.now + 2.5)
        for n in (1, 2):
            sim.update_assignment(ACCOUNT, "u_1", f"u_1_a{n}", due_date=due)
        await service.baseline()
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)  # completed before it is due
        await service.step(0.5)
        assert len(of_type(rx.events, ev.COMPLETED)) == 1
        await service.step(1.0)
        assert of_type(rx.events, ev.OVERDUE) == []  # not due yet
        await service.step(1.0)  # a1's due date has passed
        assert len(of_type(rx.events, ev.OVERDUE)) == 1
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 50)  # a later change: no second overdue
        await service.step(0.5)
        assert len(of_type(rx.events, ev.PROGRESS_CHANGED)) == 2
        await service.step(10.0)
    [overdue] = of_type(rx.events, ev.OVERDUE)
    assert overdue.data["assignment_id"] == "u_1_a1"
    assert overdue.data["assignment"]["due_date"] == due


async def test_many_due_dates_of_one_user_are_reported_in_one_check_from_one_read(
    redis_server: RedisServer, redis: Redis
) -> None:
    """1,200 due dates of one user passing together are reported by one check, reading the
    user's snapshots (which hold all 1,200 assignments) once, in a few round trips: not one
    read and decode of the whole snapshot per due date."""
    count = 1200
    settings = make_settings(
        redis_server.url, "http://127.0.0.1:9", [endpoint("http://127.0.0.1:9")], ["u_1"]
    )
    store, now = PollStore(redis), float(int(time.time()))  # whole seconds: exact due dates
    due = iso_ms(now - 60)
    due_ms = int((now - 60) * 1000)
    snapshots = {
        f"a{n}": Snapshot(1, {"id": f"a{n}", "due_date": due, "status": {"value": "in_progress"}})
        for n in range(count)
    }
    watch = [OverdueWatch(ACCOUNT, "u_1", assignment, due_ms) for assignment in snapshots]
    outbox = Outbox(watch=watch)
    await store.commit(ACCOUNT, "u_1", outbox, token=None, snapshots=snapshots)
    await redis.config_resetstat()

    watcher = OverdueWatcher(store, settings, Metrics(), clock=lambda: now)
    queued = await watcher.check()
    stats = await redis.info("commandstats")
    assert queued == count
    assert stats["cmdstat_get"]["calls"] == 1  # the user's snapshots, read once
    # three claims, three commits of 500; a script this Redis has not seen yet answers its
    # first EVALSHA with NOSCRIPT (a failed call, then loaded): not counted
    scripts = stats["cmdstat_evalsha"]
    assert scripts["calls"] - scripts["failed_calls"] <= 6
    assert await redis.zcard(keys.OVERDUE) == 0  # every due date reported, none left
    assert await redis.zcard(keys.EndpointKeys("hr").due) == count
    assert await watcher.check() == 0  # once each
