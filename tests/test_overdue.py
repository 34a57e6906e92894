"""assignment.overdue end to end: once per due date, none when completed in time."""

from __future__ import annotations

import asyncio
import time

from redis.asyncio import Redis

from service import events as ev
from service.overdue import CHECK_SECONDS
from service.sim.lms import SimLMS, iso_ms
from service.sim.receiver import Receiver
from tests.conftest import ACCOUNT, endpoint, make_settings
from tests.redis_server import RedisServer
from tests.test_e2e import baseline_taken, of_type, running, seed_user


async def test_overdue_once_and_not_when_completed_first(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    due = iso_ms(time.time() + 2.5)
    for n in (1, 2):
        sim.update_assignment(ACCOUNT, "u_1", f"u_1_a{n}", due_date=due)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"])
    async with running(settings):
        await baseline_taken(redis, "u_1")
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)  # completed before it is due
        await rx.wait_for(lambda es: len(of_type(es, ev.COMPLETED)) == 1, 10)
        await rx.wait_for(lambda es: len(of_type(es, ev.OVERDUE)) == 1, 2.5 + CHECK_SECONDS + 3)
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 50)  # a later change: no second overdue
        await rx.wait_for(lambda es: len(of_type(es, ev.PROGRESS_CHANGED)) == 2, 10)
        await asyncio.sleep(CHECK_SECONDS + 1)
    [overdue] = of_type(rx.events, ev.OVERDUE)
    assert overdue.data["assignment_id"] == "u_1_a1"
    assert overdue.data["assignment"]["due_date"] == due
