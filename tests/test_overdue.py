"""assignment.overdue end to end: once per due date, none when completed in time."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from service import events as ev
from service.sim.lms import SimLMS, iso_ms
from service.sim.receiver import Receiver
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
