"""The ways a change could be lost without a word (issue 18): a record stamped far in the
future must not hide a lagging provider's later changes; an empty or shrunken user listing
must not forget the users it no longer shows; users found in bulk must not have their first
changes absorbed into a late baseline."""

from __future__ import annotations

from typing import Any

import pytest
from redis.asyncio import Redis

from service import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from tests.helpers import ACCOUNT, driven, endpoint, make_settings, of_type, seed_user
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]
LAGGING = -300.0  # the provider's clock, 5 minutes behind StackOne's


def future_stamps(service: Any, listing: str) -> float:
    value = service.metrics.registry.get_sample_value(
        "lms_webhooks_future_stamps_total", {"listing": listing}
    )
    return value or 0.0


@pytest.mark.parametrize("strategy", ["per_user", "account"])
async def test_a_record_stamped_in_the_future_hides_no_later_change(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    sim.provider_skew = LAGGING
    seed_user(sim, "u_1", 2)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=[{"account_id": ACCOUNT, "users": ["u_1"], "strategy": strategy}],
        polling={"account_interval": "500ms"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        # one odd record: stamped at the end of time (a provider's "never" placeholder)
        sim.update_assignment(
            ACCOUNT, "u_1", "u_1_a1", progress=10, updated_at="9999-12-31T00:00:00.000Z"
        )
        await service.step(0.5)
        assert [e.data["assignment_id"] for e in of_type(rx.events, ev.UPDATED)] == ["u_1_a1"]
        assert future_stamps(service.service, "assignments") == 1  # counted, and logged
        # the provider's next change is stamped on its own, lagging clock
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        await service.step(0.5)
    [done] = of_type(rx.events, ev.COMPLETED)
    assert done.data["assignment_id"] == "u_1_a2"
