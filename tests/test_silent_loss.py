"""The ways a change could be lost without a word (issue 18): a record stamped far in the
future must not hide a lagging provider's later changes; an empty or shrunken user listing
must not forget the users it no longer shows; users found in bulk must not have their first
changes absorbed into a late baseline."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.sim.lms import SimLMS, SimResponse
from service.sim.receiver import Receiver
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    Driven,
    baselined,
    driven,
    of_type,
    seed_user,
    served,
)
from tests.redis_server import RedisServer
from tests.test_discovery import DISCOVERY, tracked
from tests.test_feed import feed_settings

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
    settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1"], strategy)
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


async def test_a_quiet_feeds_window_moves_on_without_outrunning_a_lagging_provider(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """A quiet account's feed window moves on with time (issue 22), by the time elapsed on
    StackOne's clock added to the provider's own stamps: a provider 5 minutes behind still
    has the change it makes after a quiet spell sent (a window at the answer's `Date` minus
    `overlap` would be minutes past it)."""
    sim, lms_url = lms
    rx, rx_url = receiver
    sim.provider_skew = LAGGING
    seed_user(sim, "u_1", 2)
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, ["u_1"], "account", polling={"overlap": "2s"}
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        first = sim.progress(ACCOUNT, "u_1", "u_1_a1", 10)
        for _ in range(12):  # quiet for 6 s: the window moves past the change
            await service.step(0.5)
        sim.clear_requests()
        await service.step(0.5)
        [read] = sim.requests
        assert read.query["filter[updated_after]"] > first["updated_at"]
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        await service.step(0.5)
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.UPDATED)] == [
        "u_1_a1",
        "u_1_a2",
    ]


@asynccontextmanager
async def listing_service(
    redis_server: RedisServer, rx_url: str, users: list[str], assignments: int
) -> AsyncIterator[tuple[EmptyListings, Driven]]:
    """A `users: all` account of `users` (each with `assignments`), on an upstream whose
    listing can be made to answer badly, and the service reading it, driven."""
    sim = EmptyListings(api_key=API_KEY)
    for user in users:
        seed_user(sim, user, assignments)
    async with served(sim) as lms_url:
        settings = feed_settings(
            redis_server.url, lms_url, rx_url, "all", "per_user", polling=DISCOVERY
        )
        async with driven(settings, sim) as service:
            yield sim, service


class EmptyListings(SimLMS):
    """An upstream whose user listing answers `data: []` (a complete, empty listing) while
    `empty` is set, or lists only the users in `only` while that is set: a bad day on the
    provider's side, not users leaving."""

    empty = False
    only: set[str] | None = None

    def handle_users(self, headers: Mapping[str, str], query: Mapping[str, str]) -> SimResponse:
        answer = super().handle_users(headers, query)
        if answer.status == 200 and (self.empty or self.only is not None):
            body = json.loads(answer.body)
            if self.empty:
                body = {"data": [], "next": None}
            else:  # page by page, as listed
                body["data"] = [u for u in body["data"] if u["id"] in (self.only or ())]
            answer.body = json.dumps(body).encode()
        return answer


async def test_a_complete_listing_that_drops_most_users_forgets_nobody_until_a_second_agrees(
    redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    rx, rx_url = receiver
    users = ["u_1", "u_2", "u_3", "u_4"]
    async with listing_service(redis_server, rx_url, users, 2) as (sim, service):
        await service.baseline()
        await service.step(0.5)  # every user's baseline taken
        assert await tracked(redis) == set(users)
        sim.empty = True
        service.clock.advance(10.0)  # a complete listing is due, and answers nobody
        await service.step(0.0)
        assert await tracked(redis) == set(users)  # held: nobody is forgotten
        sim.empty = False
        sim.progress(ACCOUNT, "u_2", "u_2_a1", 100)  # made while the listing is in doubt
        await service.step(0.5)
        await service.step(2.0)  # the next listing is complete again, and lists everyone
        assert await tracked(redis) == set(users)
        sim.progress(ACCOUNT, "u_3", "u_3_a1", 100)
        await service.step(0.5)
        # users who really left: the first complete listing is held, the second agrees
        for user in ("u_2", "u_3", "u_4"):
            sim.remove_user(ACCOUNT, user)
        service.clock.advance(10.0)
        await service.step(0.0)
        assert await tracked(redis) == set(users)
        await service.step(2.0)
        assert await tracked(redis) == {"u_1"}
    completed = [e.data["user_id"] for e in of_type(rx.events, ev.COMPLETED)]
    assert completed == ["u_2", "u_3"]  # sent, and nobody came back re-baselined in between
    assert of_type(rx.events, ev.CREATED) == []


class ChangeAfterListing(SimLMS):
    """An upstream where a user's assignment changes two seconds after a user listing
    answered (once): right after the user was found, before the service read it."""

    change: tuple[str, str] | None = None

    async def while_answering(self, path: str) -> None:
        if path == "/unified/lms/users" and self.change is not None:
            user, assignment = self.change
            self.change = None
            self.clock.advance(2.0)  # type: ignore[attr-defined]  # the test's Clock
            self.progress(ACCOUNT, user, assignment, 100)


@pytest.mark.parametrize("strategy", ["account", "per_user"])
async def test_users_found_in_bulk_keep_the_changes_they_make_before_their_baseline(
    strategy: str, redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    rx, rx_url = receiver
    sim = ChangeAfterListing(api_key=API_KEY)
    seed_user(sim, "u_1", 1)
    joiners = [f"j_{n:02}" for n in range(40)]  # more than one feed read baselined on its own
    async with served(sim) as lms_url:
        settings = feed_settings(
            redis_server.url, lms_url, rx_url, "all", strategy, polling=DISCOVERY
        )
        async with driven(settings, sim) as service:
            await service.baseline()
            await service.step(0.5)
            for user in joiners:  # a department joins at once
                sim.set_user(ACCOUNT, user, name=user)
                seed_user(sim, user, 1)
            sim.change = ("j_39", "j_39_a1")
            await service.step(2.0)  # the listing finds them; j_39 completes just after
            assert set(joiners) <= await tracked(redis)
            if strategy == "account":  # one full read of the account baselines them all
                await service.step(0.0)
                assert all([await baselined(redis, u) for u in joiners])
            for _ in range(4):
                await service.step(0.5)
            assert all([await baselined(redis, u) for u in joiners])
    [done] = of_type(rx.events, ev.COMPLETED)
    assert done.data["user_id"] == "j_39"
    # nothing else: every other assignment of the joiners is their baseline, silent
    assert {e.data["user_id"] for e in rx.events} == {"j_39"}


async def test_two_bad_listings_that_disagree_forget_nobody(
    redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    """An empty listing, then one cut short to 40% of the users: each leaves out more than
    half, but not the same users, so they do not agree and nobody is forgotten; a listing
    that lists everyone again ends the hold."""
    _, rx_url = receiver
    users = [f"u_{n}" for n in range(1, 11)]
    async with listing_service(redis_server, rx_url, users, 1) as (sim, service):
        await service.baseline()
        assert await tracked(redis) == set(users)
        sim.empty = True
        service.clock.advance(10.0)
        await service.step(0.0)  # held
        sim.empty, sim.only = False, set(users[:4])
        await service.step(2.0)  # leaves out 60%, not the 100% the first left out
        assert await tracked(redis) == set(users)
        sim.only = None
        await service.step(2.0)  # everyone again: the hold ends
        assert await tracked(redis) == set(users)
        sim.only = set(users[:4])  # and the same short answer twice now agrees
        service.clock.advance(10.0)
        await service.step(0.0)
        await service.step(2.0)
        assert await tracked(redis) == set(users[:4])
