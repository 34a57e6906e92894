"""Full resync: removals only after complete reads, tombstones, pages shifting under us."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.sim.lms import SimLMS, start_sim_server
from service.sim.lms_state import SimResponse
from service.sim.receiver import Receiver
from service.upstream.model import parse_page
from tests.helpers import ACCOUNT, API_KEY, driven, endpoint, make_settings, of_type, seed_user
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]


class ShiftingLMS(SimLMS):
    """Deletes an assignment just before answering the second page of a listing, as a
    concurrent delete upstream would: offset paging then skips a record that still exists."""

    delete_on_page_two: str | None = None

    def handle_list(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        if self.delete_on_page_two and "next" in query:
            self.delete_assignment(ACCOUNT, user_id, self.delete_on_page_two)
            self.delete_on_page_two = None
        return super().handle_list(user_id, headers, query)


@pytest.mark.parametrize(
    ("record", "kept", "skipped"),
    [
        ({"id": "a1", "progress": 5}, True, {}),
        ({"id": 123}, True, {}),  # numeric ids are ids
        ({"progress": 5}, False, {"missing_id": 1}),
        ({"id": ""}, False, {"missing_id": 1}),
        ({"id": "a1", "status": "completed"}, False, {"invalid_record": 1}),
        ({"id": "a1", "status": {"value": "archived"}, "x": 1}, True, {}),  # unknown enum value
    ],
)
def test_parse_page_records(record: dict[str, Any], kept: bool, skipped: dict[str, int]) -> None:
    page = parse_page(json.dumps({"data": [record], "next": None}).encode())
    assert bool(page.records) is kept and page.skipped == skipped
    if kept:
        assert isinstance(page.records[0]["id"], str)


async def test_removed_once_then_recreated_with_a_new_id(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        polling={"full_resync_interval": "1s"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        removed = sim.delete_assignment(ACCOUNT, "u_1", "u_1_a2")
        await service.step(1.0)  # a full resync
        assert len(of_type(rx.events, ev.REMOVED)) == 1
        for _ in range(3):
            await service.step(1.0)  # further full resyncs: no second removal
        assert len(of_type(rx.events, ev.REMOVED)) == 1
        sim.put_assignment(ACCOUNT, "u_1", removed)
        await service.step(1.0)
    [gone] = of_type(rx.events, ev.REMOVED)
    [back] = of_type(rx.events, ev.CREATED)
    assert gone.data["sequence"] == 2 and back.data["sequence"] == 3
    assert back.webhook_id != gone.webhook_id and back.data["previous"] is None


async def test_a_resync_failing_on_page_two_removes_nothing(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 5)  # three pages of two
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        polling={"full_resync_interval": "1s"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.delete_assignment(ACCOUNT, "u_1", "u_1_a1")
        # every second page is cut short for a while: no full read completes
        original = sim.handle_list

        def failing(user_id: str, headers: Mapping[str, str], query: Mapping[str, str]) -> Any:
            if "next" in query:
                return SimResponse(200, b'{"data": [', {})
            return original(user_id, headers, query)

        sim.handle_list = failing  # type: ignore[method-assign]
        for _ in range(6):  # full resyncs are due, and each fails on its second page
            await service.step(0.5)
        assert of_type(rx.events, ev.REMOVED) == []
        sim.handle_list = original  # type: ignore[method-assign]
        await service.step(1.0)
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.REMOVED)] == ["u_1_a1"]


async def test_pages_shifting_during_a_resync_remove_only_what_is_gone(
    redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    rx, rx_url = receiver
    sim = ShiftingLMS(api_key=API_KEY)
    runner, lms_url = await start_sim_server(sim)
    seed_user(sim, "u_1", 5)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        # no overlap: incremental polls read nothing, so page 2 is the full resync's
        polling={"full_resync_interval": "1s", "overlap": 0},
    )
    try:
        async with driven(settings, sim) as service:
            await service.baseline()
            sim.delete_on_page_two = "u_1_a1"  # page 2 then starts at a4: a3 is not read
            for _ in range(3):  # full resyncs
                await service.step(1.0)
    finally:
        await runner.cleanup()
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.REMOVED)] == ["u_1_a1"]
