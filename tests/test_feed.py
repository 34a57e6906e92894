"""`strategy: account`: one account-wide read finds every change of every tracked user, with
the events, ids and sequences per-user polling would send; switching either way re-sends
nothing and misses nothing; `auto` falls back where the upstream cannot serve the feed."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.changes.detect import event_id, record_digest
from service.sim.lms import SimLMS, SimResponse
from service.sim.receiver import Receiver
from service.store import keys
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    Driven,
    as_json,
    driven,
    endpoint,
    make_settings,
    of_type,
    seed_user,
    served,
)
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]
FEED_PATH = "/unified/lms/assignments"
BULK_EACH = 20  # assignments of each user changed in one bulk


def feed_settings(
    redis_url: str, lms_url: str, rx_url: str, users: list[str] | str, strategy: str, **extra: Any
) -> Any:
    polling = {"account_interval": "500ms", **extra.pop("polling", {})}
    return make_settings(
        redis_url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=[{"account_id": ACCOUNT, "users": users, "strategy": strategy}],
        polling=polling,
        **extra,
    )


def paths(sim: SimLMS) -> list[str]:
    return [r.path for r in sim.requests]


async def test_feed_sends_what_per_user_polling_would(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    for user in ("u_1", "u_2"):
        seed_user(sim, user, 3)
    seed_user(sim, "u_9", 2)  # not tracked
    settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1", "u_2"], "account")
    async with driven(settings, sim) as service:
        await service.baseline()
        assert rx.events == []  # the first read baselines silently
        sim.clear_requests()
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        sim.progress(ACCOUNT, "u_2", "u_2_a1", 40)
        sim.progress(ACCOUNT, "u_9", "u_9_a1", 100)
        await service.step(0.5)
        # one read of the account, however many users: no per-user request
        assert set(paths(sim)) == {FEED_PATH}
    [done] = of_type(rx.events, ev.COMPLETED)
    assert (done.data["user_id"], done.data["assignment_id"]) == ("u_1", "u_1_a2")
    # the id per-user polling gives the same change: the snapshot's second sequence
    content = record_digest(done.data["assignment"])
    assert done.webhook_id == event_id(ACCOUNT, "u_1", "u_1_a2", 2, ev.COMPLETED, content)
    assert done.data["previous"]["status"]["value"] == "pending"
    [progress] = [e for e in of_type(rx.events, ev.PROGRESS_CHANGED) if e.data["user_id"] == "u_2"]
    assert progress.data["changed_fields"] == ["progress", "status"]
    assert {e.data["user_id"] for e in rx.events} == {"u_1", "u_2"}  # u_9 is not tracked


async def test_switching_strategies_resends_nothing_and_misses_nothing(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    seed_user(sim, "u_2", 2)
    settings = {
        strategy: feed_settings(redis_server.url, lms_url, rx_url, ["u_1", "u_2"], strategy)
        for strategy in ("per_user", "account")
    }
    async with driven(settings["per_user"], sim) as service:
        await service.baseline()
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 30)
        await service.step(0.5)
    sim.progress(ACCOUNT, "u_2", "u_2_a1", 50)  # while switching to the feed
    async with driven(settings["account"], sim) as service:
        await service.baseline()
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        await service.step(0.5)
    sim.progress(ACCOUNT, "u_2", "u_2_a2", 100)  # while switching back
    async with driven(settings["per_user"], sim) as service:
        await service.baseline()
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 60)
        await service.step(0.5)
    updates = [
        (e.data["assignment_id"], e.data["sequence"]) for e in of_type(rx.events, ev.UPDATED)
    ]
    assert updates == [("u_1_a1", 2), ("u_2_a1", 2), ("u_1_a2", 2), ("u_2_a2", 2), ("u_1_a1", 3)]
    assert len({e.webhook_id for e in rx.events}) == len(rx.events)  # nothing sent twice


async def test_a_bulk_with_one_stamp_is_read_again_for_the_overlap_then_no_more(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """HR assigns a course to everyone in one second, then the account goes quiet: the feed
    reads the bulk again for `overlap`, then one page a read, not the whole bulk forever."""
    sim, lms_url = lms
    rx, rx_url = receiver
    users = [f"u_{n}" for n in range(1, 11)]
    for user in users:
        seed_user(sim, user, BULK_EACH)
    settings = feed_settings(
        redis_server.url,
        lms_url,
        rx_url,
        users,
        "account",
        polling={"overlap": "2s"},
        stackone={"page_size": 20},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        stamp = sim.now_iso()
        for user in users:
            for n in range(1, BULK_EACH + 1):
                sim.update_assignment(ACCOUNT, user, f"{user}_a{n}", progress=5, updated_at=stamp)
        pages = []
        for _ in range(12):  # a read every 0.5 s for 6 s
            sim.clear_requests()
            await service.step(0.5)
            pages.append(paths(sim).count(FEED_PATH))
    assert pages[0] == 10  # the bulk: 200 records, 20 a page
    # at most 2 s of overlap, 2 s of `Date`s truncated to the second (the anchor's and the
    # read's), and the read that moves the window past the bulk: 8 reads of it at most
    assert pages[8:] == [1, 1, 1, 1]
    assert len(of_type(rx.events, ev.UPDATED)) == len(users) * BULK_EACH  # each once


async def test_untracked_users_and_records_without_user_id_are_skipped(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1"], "account")
    async with driven(settings, sim) as service:
        await service.baseline()
        orphan = {k: v for k, v in sim.get_assignment(ACCOUNT, "u_1", "u_1_a1").items()}
        del orphan["user_id"]
        sim.put_assignment(ACCOUNT, "u_1", {**orphan, "progress": 10})
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        await service.step(0.5)
        metrics = service.service.metrics.render().decode()
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.COMPLETED)] == ["u_1_a2"]
    assert 'lms_webhooks_records_skipped_total{reason="missing_user_id"} 1.0' in metrics


async def test_removed_only_when_the_users_own_read_agrees(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)
    seed_user(sim, "u_2", 1)
    settings = feed_settings(
        redis_server.url,
        lms_url,
        rx_url,
        ["u_1", "u_2"],
        "account",
        polling={"full_resync_interval": "1s"},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.delete_assignment(ACCOUNT, "u_1", "u_1_a3")
        sim.delete_assignment(ACCOUNT, "u_2", "u_2_a1")  # u_2 has none left
        await service.step(1.0)  # a full read of the account
        await service.step(1.0)  # and another: nothing twice
    removed = sorted(e.data["assignment_id"] for e in of_type(rx.events, ev.REMOVED))
    assert removed == ["u_1_a3", "u_2_a1"]


async def test_a_user_added_at_run_time_is_baselined_then_followed(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    seed_user(sim, "u_2", 2)
    settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1"], "account")
    async with driven(settings, sim) as service:
        await service.baseline()
        assert await service.service.operations.add_user(ACCOUNT, "u_2")
        assert await redis.zscore(keys.POLL_DUE, keys.user_member(ACCOUNT, "u_2")) is None
        await service.step(0.5)  # the feed reads u_2 on its own once: its baseline
        assert rx.events == []
        sim.progress(ACCOUNT, "u_2", "u_2_a2", 100)
        await service.step(0.5)
    [done] = of_type(rx.events, ev.COMPLETED)
    assert done.data["assignment_id"] == "u_2_a2" and done.data["sequence"] == 2


async def complete_through_an_ignored_filter(service: Driven, sim: SimLMS) -> None:
    """u_1's first assignment completes while the account's feed ignores the filter: the
    first read is full (no filter asked for), the next reads through the filter (the
    watermark moves on), the one after gets records older than its bound: falls back."""
    await service.baseline()
    service.clock.advance(60)
    sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
    await service.step(0.5)
    await service.step(0.5)


async def test_auto_falls_back_to_per_user_when_the_filter_is_ignored(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.faults.account_filter_ignored = True
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, ["u_1"], "auto", http={"admin_token": "t0k"}
    )
    async with driven(settings, sim) as service:
        await complete_through_an_ignored_filter(service, sim)
        [account] = as_json(await service.service.operations.accounts())
        assert account["strategy_in_force"] == "per_user"
        assert account["fallback"]["reason"] == "filter_ignored"
        sim.clear_requests()
        await service.step(0.5)  # polled per user from now on
        assert FEED_PATH not in paths(sim)
        assert set(paths(sim)) == {"/unified/lms/users/u_1/assignments"}
        metrics = service.service.metrics.render().decode()
    [done] = of_type(rx.events, ev.COMPLETED)
    assert done.data["sequence"] == 2
    assert 'lms_webhooks_feed_fallbacks_total{reason="filter_ignored"} 1.0' in metrics


async def test_auto_falls_back_on_501_and_tries_the_feed_again_later(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.faults.account_endpoint_status = 501
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, ["u_1"], "auto", polling={"full_resync_interval": "1m"}
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        [account] = as_json(await service.service.operations.accounts())
        assert account["fallback"]["reason"] == "status_501"
        assert len([p for p in paths(sim) if p == FEED_PATH]) == 1  # 501 is not retried
        await service.step(0.5)  # u_1's first poll of its own: its baseline
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        assert len(of_type(rx.events, ev.COMPLETED)) == 1
        sim.faults.account_endpoint_status = None
        await service.step(60.0)  # full_resync_interval on: the feed again
        [account] = as_json(await service.service.operations.accounts())
        assert account["strategy_in_force"] == "account" and account["fallback"] is None
        sim.clear_requests()
        sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
        await service.step(0.5)
        assert set(paths(sim)) == {FEED_PATH}
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.COMPLETED)] == [
        "u_1_a1",
        "u_1_a2",
    ]


class TwiceListingLMS(SimLMS):
    """Lists one assignment twice in the account feed, on every page: an older version (a
    stale row at the provider) before or after the current one."""

    stale: dict[str, Any] | None = None
    stale_first = True

    def handle_account_assignments(self, headers: Any, query: Any) -> SimResponse:
        response = super().handle_account_assignments(headers, query)
        if self.stale is not None and response.status == 200:
            body = json.loads(response.body)
            if self.stale_first:
                body["data"].insert(0, self.stale)
            else:
                body["data"].append(self.stale)
            response.body = json.dumps(body).encode()
        return response


@pytest.mark.parametrize("stale_first", [True, False])
async def test_an_assignment_listed_twice_is_one_version(
    stale_first: bool, redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    sim = TwiceListingLMS(api_key=API_KEY)
    sim.stale_first = stale_first
    rx, rx_url = receiver
    async with served(sim) as lms_url:
        seed_user(sim, "u_1", 2)
        settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1"], "account")
        async with driven(settings, sim) as service:
            await service.baseline()
            sim.stale = sim.progress(ACCOUNT, "u_1", "u_1_a1", 50)
            sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
            for _ in range(3):
                await service.step(0.5)
            metrics = service.service.metrics.render().decode()
    # per-user polling sends this one change (the latest version wins); so does the feed,
    # however the provider orders the stale row, and no change back and forth after it
    assert [e.data["sequence"] for e in of_type(rx.events, ev.UPDATED)] == [2]
    assert [e.data["assignment"]["progress"] for e in of_type(rx.events, ev.UPDATED)] == [100]
    assert 'lms_webhooks_records_skipped_total{reason="duplicate_id"}' in metrics


async def test_emit_on_first_sync_sends_the_first_read_of_the_account(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, ["u_1"], "account", polling={"emit_on_first_sync": True}
    )
    async with driven(settings, sim) as service:
        await service.baseline()
    assert sorted(e.data["assignment_id"] for e in of_type(rx.events, ev.CREATED)) == [
        "u_1_a1",
        "u_1_a2",
    ]
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.COMPLETED)] == ["u_1_a2"]


async def test_a_user_removed_and_added_again_is_baselined_again(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    seed_user(sim, "u_2", 2)
    settings = feed_settings(redis_server.url, lms_url, rx_url, ["u_1"], "account")
    async with driven(settings, sim) as service:
        operations = service.service.operations
        await service.baseline()
        assert await operations.add_user(ACCOUNT, "u_2")
        await service.step(0.5)  # baselined by its own read
        assert await operations.remove_user(ACCOUNT, "u_2")  # its snapshots forgotten
        assert await operations.add_user(ACCOUNT, "u_2")
        await service.step(0.5)  # baselined again, silently
        sim.progress(ACCOUNT, "u_2", "u_2_a2", 100)
        await service.step(0.5)
    [done] = of_type(rx.events, ev.COMPLETED)
    assert done.data["assignment_id"] == "u_2_a2"
    assert [e.data["assignment_id"] for e in of_type(rx.events, ev.CREATED)] == []


@asynccontextmanager
async def u_2_added_to_a_feed(
    sim: SimLMS, redis_url: str, rx_url: str, u_2_assignments: int
) -> AsyncIterator[Driven]:
    """`sim` (a test's own) served; u_1 (one assignment) followed through the account feed
    and baselined; u_2 (`u_2_assignments`) added at run time, not read yet."""
    async with served(sim) as lms_url:
        seed_user(sim, "u_1", 1)
        seed_user(sim, "u_2", u_2_assignments)
        settings = feed_settings(redis_url, lms_url, rx_url, ["u_1"], "account")
        async with driven(settings, sim) as service:
            await service.baseline()
            assert await service.service.operations.add_user(ACCOUNT, "u_2")
            yield service


class ActsDuringTheFeedLMS(SimLMS):
    """Runs `during_feed` (once) while an account feed read is in flight."""

    during_feed: Callable[[], Awaitable[object]] | None = None

    async def while_answering(self, path: str) -> None:
        if path == FEED_PATH and self.during_feed is not None:
            act, self.during_feed = self.during_feed, None
            await act()


async def test_a_user_removed_during_a_feed_read_stays_forgotten(
    redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    """The read took u_2 as tracked and finds its change; u_2 is removed before it commits:
    its snapshots and state do not come back, and when it is added again it is baselined
    again, silently (stale snapshots would have told of what changed while it was away)."""
    sim = ActsDuringTheFeedLMS(api_key=API_KEY)
    rx, rx_url = receiver
    async with u_2_added_to_a_feed(sim, redis_server.url, rx_url, 2) as service:
        operations = service.service.operations
        await service.step(0.5)  # baselined by its own read
        sim.progress(ACCOUNT, "u_2", "u_2_a1", 50)
        sim.during_feed = partial(operations.remove_user, ACCOUNT, "u_2")
        await service.step(0.5)
        assert sim.during_feed is None  # it ran, during that read
        assert not await redis.exists(
            keys.snapshots(ACCOUNT, "u_2"), keys.user_state(ACCOUNT, "u_2")
        )
        sent = len(rx.events)
        sim.put_assignment(ACCOUNT, "u_2", {"id": "u_2_a3"})  # while u_2 is not tracked
        sim.progress(ACCOUNT, "u_2", "u_2_a2", 100)
        assert await operations.add_user(ACCOUNT, "u_2")
        await service.step(0.5)  # baselined again, silently
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
    later = rx.events[sent:]
    assert [e.data["user_id"] for e in later] == ["u_1"] * len(later)
    assert [e.data["assignment_id"] for e in of_type(later, ev.COMPLETED)] == ["u_1_a1"]


class OneUserFailsLMS(SimLMS):
    """The per-user endpoint of one user answers `answer` (the account feed works)."""

    failing: str | None = None
    answer: SimResponse | None = None

    def handle_list(self, user_id: str, headers: Any, query: Any) -> SimResponse:
        response = super().handle_list(user_id, headers, query)
        if user_id == self.failing and self.answer is not None:
            return self.answer
        return response


@pytest.mark.parametrize("answer", ["500", "404", "not json"])
async def test_a_user_whose_own_read_fails_does_not_hold_up_the_account(
    answer: str, redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    sim = OneUserFailsLMS(api_key=API_KEY)
    rx, rx_url = receiver
    sim.failing = "u_2"
    sim.answer = SimResponse(200, b"{not json") if answer == "not json" else sim.error(int(answer))
    async with u_2_added_to_a_feed(sim, redis_server.url, rx_url, 1) as service:
        operations = service.service.operations
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        assert len(of_type(rx.events, ev.COMPLETED)) == 1  # u_1's change went on
        sim.clear_requests()
        for _ in range(3):  # u_2 is backed off: not read again at every feed read
            await service.step(0.5)
        assert "/unified/lms/users/u_2/assignments" not in paths(sim)
        [account] = as_json(await operations.accounts())
    assert account["feed"]["failures"] == 0
    assert not await redis.hget(keys.user_state(ACCOUNT, "u_2"), "baselined")


async def test_an_account_longer_than_a_users_page_limit_is_read_whole(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    for n in range(1, 6):
        seed_user(sim, f"u_{n}", 2)  # 10 records: 5 pages of 2
    settings = feed_settings(
        redis_server.url,
        lms_url,
        rx_url,
        [f"u_{n}" for n in range(1, 6)],
        "account",
        stackone={"base_url": lms_url, "api_key": API_KEY, "page_size": 2, "max_pages": 3},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.progress(ACCOUNT, "u_5", "u_5_a2", 100)
        await service.step(0.5)
    assert [e.data["user_id"] for e in of_type(rx.events, ev.COMPLETED)] == ["u_5"]


async def test_auto_trying_the_feed_again_asks_for_the_filter(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.faults.account_filter_ignored = True
    settings = feed_settings(
        redis_server.url, lms_url, rx_url, ["u_1"], "auto", polling={"full_resync_interval": "1m"}
    )
    async with driven(settings, sim) as service:
        await complete_through_an_ignored_filter(service, sim)
        await service.step(60.0)  # tried again: still ignored, so back to per-user at once
        [account] = as_json(await service.service.operations.accounts())
        sim.clear_requests()
        await service.step(0.5)
        requested = paths(sim)
        metrics = service.service.metrics.render().decode()
    assert account["strategy_in_force"] == "per_user"
    assert FEED_PATH not in requested and "/unified/lms/users/u_1/assignments" in requested
    assert 'lms_webhooks_feed_fallbacks_total{reason="filter_ignored"} 2.0' in metrics
    assert len(of_type(rx.events, ev.COMPLETED)) == 1
