"""`account_discovery`: the key's linked accounts (`GET /accounts`) decide which accounts are
read besides the config's: new ones are baselined silently, unlinked ones forgotten (not on
a listing that fails or suddenly drops most of them), inactive ones not read until they are
active again, other providers' and non-LMS accounts left alone, credentials never kept."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from multidict import MultiDict
from redis.asyncio import Redis

from service.app import Service
from service.changes import events as ev
from service.cli import main
from service.config import Settings
from service.mass_drop import DropDecision, decide_left_out
from service.resources import COMPLETIONS
from service.sim.linked import CREDENTIAL_MARK
from service.sim.lms import SimLMS, SimResponse
from service.sim.receiver import Receiver
from service.store import directory, keys
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    Clock,
    RunProcess,
    WhileAnswering,
    as_json,
    driven,
    endpoint,
    make_settings,
    queue_drained,
    served,
    two_processes,
    wait_until,
)
from tests.redis_server import RedisServer
from tests.test_config import ENV, MINIMAL, check_config_exit

Rx = tuple[Receiver, str]
TOKEN = "admin-token-discovery"
INTERVAL = 10.0  # account_discovery.interval


def settings_for(redis_url: str, lms_url: str, rx_url: str, **discovery: Any) -> Settings:
    """No account in the config: discovery finds them, each read with the defaults
    (users: all, strategy: auto)."""
    return make_settings(
        redis_url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=discovery.pop("accounts", []),
        polling={"account_interval": "500ms", "discovery_interval": "2s"},
        account_discovery={"enabled": True, "interval": f"{INTERVAL}s", **discovery},
        http={"admin_token": TOKEN},
    )


@dataclass
class World:
    """The simulator and the receiver, and the settings of a service on them."""

    sim: SimLMS
    rx: Receiver
    urls: tuple[str, str, str]  # Redis, the simulator, the receiver

    def settings(self, **discovery: Any) -> Settings:
        return settings_for(*self.urls, **discovery)


@pytest.fixture
def world(redis_server: RedisServer, lms: tuple[SimLMS, str], receiver: Rx) -> World:
    return World(lms[0], receiver[0], (redis_server.url, lms[1], receiver[1]))


def seed(sim: SimLMS, account_id: str, users: int = 2, count: int = 2) -> None:
    for u in range(1, users + 1):
        for n in range(1, count + 1):
            sim.put_assignment(account_id, f"u_{u}", {"id": f"{account_id}_u_{u}_a{n}"})


async def linked(redis: Redis) -> dict[str, dict[str, Any]]:
    raw = await redis.hgetall(keys.LINKED_ACCOUNTS)
    return {a: json.loads(v) for a, v in raw.items()}


async def read_now(service: Service) -> set[str]:
    return set((await service.stores.accounts.current()).settings)


def asked(sim: SimLMS, account_id: str) -> list[str]:
    return [r.path for r in sim.requests if r.account_id == account_id]


async def redis_mentions(redis: Redis, text: str) -> list[str]:
    """Every key whose name, or any member, field or value, holds `text`."""
    found = []
    async for key in redis.scan_iter("*"):
        kind = await redis.type(key)
        if kind == "string":
            parts = [await redis.get(key)]
        elif kind == "hash":
            parts = [x for pair in (await redis.hgetall(key)).items() for x in pair]
        elif kind == "set":
            parts = list(await redis.smembers(key))
        elif kind == "zset":
            parts = await redis.zrange(key, 0, -1)
        else:
            parts = await redis.lrange(key, 0, -1)
        if any(text in str(p) for p in [key, *parts]):
            found.append(key)
    return found


async def test_a_linked_account_is_baselined_silently_and_absorbs_no_change_made_after_it_was_found(
    redis: Redis, world: World
) -> None:
    sim, rx = world.sim, world.rx
    seed(sim, ACCOUNT, users=30)  # more than a feed read baselines one by one
    async with driven(world.settings(), sim) as service:
        assert service.service.linked is not None
        await service.service.linked.run_once()  # the listing alone: acc_1 is found
        assert (await linked(redis))[ACCOUNT]["status"] == "active"
        service.clock.advance(3.0)
        sim.progress(ACCOUNT, "u_1", f"{ACCOUNT}_u_1_a1", 100)  # found, not yet read
        await service.step(0.0)  # its users listed, then its feed's full read: one pass
        assert await redis.scard(keys.discovered_users(ACCOUNT)) == 30
        assert not any("/users/u_" in p for p in asked(sim, ACCOUNT))  # no user on its own
        await service.step(0.5)
        await service.step(0.5)
    assert {e.data["assignment_id"] for e in rx.events} == {f"{ACCOUNT}_u_1_a1"}
    assert len(of_kind(rx, ev.COMPLETED)) == 1  # the change, once; the rest baselined silently


def of_kind(rx: Receiver, kind: str) -> list[Any]:
    return [e for e in rx.events if e.type == kind]


async def test_an_unlinked_account_is_not_read_after_the_next_listing_and_is_forgotten(
    redis: Redis, world: World
) -> None:
    sim, rx = world.sim, world.rx
    for account in ("acc_1", "acc_2", "acc_3"):
        seed(sim, account)
    settings = world.settings(defaults={"users": "all"})
    async with driven(settings, sim) as service:
        await service.step(0.0)
        await service.step(0.5)
        assert await read_now(service.service) == {"acc_1", "acc_2", "acc_3"}
        assert await redis.exists(keys.snapshots("acc_2", "u_1"))
        sim.unlink_account("acc_2")
        await service.step(INTERVAL)
        assert await read_now(service.service) == {"acc_1", "acc_3"}
        await service.step(INTERVAL)  # a second listing agrees: it is gone
        assert await redis_mentions(redis, "acc_2") == []  # users, snapshots, state, schedules
        sim.clear_requests()
        sim.progress("acc_2", "u_1", "acc_2_u_1_a1", 100)
        for _ in range(3):
            await service.step(2.0)
        assert asked(sim, "acc_2") == [] and asked(sim, "acc_1") != []
    assert rx.events == []


async def test_an_unlinked_account_tracking_completions_leaves_no_snapshot_behind(
    redis: Redis, world: World
) -> None:
    sim, rx = world.sim, world.rx
    for account in ("acc_1", "acc_2", "acc_3"):
        seed(sim, account)
        sim.put_completion(account, "u_1", {"id": f"{account}_c1"})
    settings = world.settings(
        defaults={"users": "all", "strategy": "auto", "track": ["assignments", "completions"]}
    )
    async with driven(settings, sim) as service:
        await service.step(0.0)
        await service.step(0.5)
        assert await redis.exists(keys.snapshots("acc_2", "u_1", COMPLETIONS))
        sim.unlink_account("acc_2")
        await service.step(INTERVAL)
        await service.step(INTERVAL)
        assert await read_now(service.service) == {"acc_1", "acc_3"}
        # a re-linked account would compare with stale completion snapshots otherwise
        assert await redis_mentions(redis, "acc_2") == []
    assert rx.events == []


async def test_an_account_one_listing_leaves_out_is_not_read_but_kept_until_a_second_agrees(
    redis: Redis, world: World
) -> None:
    """GET /accounts is paged by number: an account unlinked on page 1 while the listing
    reads page 2 shifts the first account of page 2 out of that one listing."""
    sim, rx = world.sim, world.rx
    for account in ("acc_1", "acc_2", "acc_3"):
        seed(sim, account)
    async with driven(world.settings(), sim, http=True) as service:
        await service.step(0.0)
        await service.step(0.5)
        sim.unlink_account("acc_2")  # left out of one listing (one of three: no mass drop)
        await service.step(INTERVAL)
        assert await read_now(service.service) == {"acc_1", "acc_3"}
        assert await redis.exists(keys.snapshots("acc_2", "u_1"))  # its state is kept
        [item] = await admin_accounts(service.service, "acc_2")
        assert item["state"] == "inactive"
        assert item["status_reasons"] == ["missing from the last listing"]
        sim.clear_requests()
        sim.progress("acc_2", "u_1", "acc_2_u_1_a1", 100)  # while it is not read
        sim.link_account("acc_2")
        await service.step(2.0)
        assert asked(sim, "acc_2") == []
        await service.step(INTERVAL)  # listed again: compared with its snapshots
        for _ in range(3):
            await service.step(2.0)
        assert await read_now(service.service) == {"acc_1", "acc_2", "acc_3"}
        assert {e.data["assignment_id"] for e in rx.events} == {"acc_2_u_1_a1"}
        assert len(of_kind(rx, ev.COMPLETED)) == 1
        sim.unlink_account("acc_2")
        await service.step(INTERVAL)
        assert await redis.exists(keys.snapshots("acc_2", "u_1"))
        await service.step(INTERVAL)  # a second listing an interval later agrees
        logged = (keys.LOG_EVENT_PREFIX, keys.LOG_DATA_PREFIX)  # the delivery log keeps its events
        kept = [k for k in await redis_mentions(redis, "acc_2") if not k.startswith(logged)]
        assert kept == []
    assert len(of_kind(rx, ev.COMPLETED)) == 1  # sent once; nothing baselined again
    assert len({e.webhook_id for e in rx.events}) == len(rx.events)


def test_an_account_left_out_goes_only_when_a_listing_an_interval_later_agrees() -> None:
    def decide(gone: list[str], since: dict[str, int], now_ms: int) -> DropDecision:
        return decide_left_out(
            gone, 10, since, full=True, first_ms=0, held=set(), now_ms=now_ms, agree_after_ms=100
        )

    assert decide(["a"], {}, 1000) == DropDecision(0, [], missing=["a"])
    assert decide(["a"], {"a": 1000}, 1050).drop == []  # too soon: still missing
    assert decide(["a", "b"], {"a": 1000}, 1100) == DropDecision(0, ["a"], missing=["b"])
    # six more left out at once (of nine listed): a mass drop changes nothing, "a" included
    mass = decide(["a", *"cdefgh"], {"a": 1000}, 1200)
    assert mass.held and mass.drop == [*"cdefgh"] and mass.missing == []


async def admin_accounts(service: Service, account_id: str) -> list[dict[str, Any]]:
    assert service.http_url is not None
    async with aiohttp.ClientSession(base_url=service.http_url) as http:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get("/admin/accounts", headers=auth) as response:
            assert response.status == 200
            page = await response.json()
    return [a for a in page["accounts"] if a["account_id"] == account_id]


async def test_an_inactive_account_is_not_read_and_its_changes_are_sent_once_it_is_active(
    redis: Redis, world: World
) -> None:
    sim, rx = world.sim, world.rx
    seed(sim, ACCOUNT)
    async with driven(world.settings(), sim) as service:
        await service.step(0.0)
        await service.step(0.5)
        sim.link_account(ACCOUNT, status="inactive", status_reasons=[{"code": "expired_token"}])
        await service.step(INTERVAL)
        assert (await linked(redis))[ACCOUNT]["status_reasons"] == ["expired_token"]
        assert await read_now(service.service) == set()
        sim.clear_requests()
        sim.progress(ACCOUNT, "u_1", f"{ACCOUNT}_u_1_a1", 100)  # while it is not read
        for _ in range(3):
            await service.step(2.0)
        assert asked(sim, ACCOUNT) == [] and rx.events == []
        assert await redis.exists(keys.snapshots(ACCOUNT, "u_1"))  # its state is kept
        sim.link_account(ACCOUNT, status="active")
        await service.step(INTERVAL)
        for _ in range(3):
            await service.step(2.0)
    assert {e.data["assignment_id"] for e in rx.events} == {f"{ACCOUNT}_u_1_a1"}
    assert len(of_kind(rx, ev.COMPLETED)) == 1  # sent once; nothing baselined again


class IgnoresFilters(SimLMS):
    """An upstream whose GET /accounts lists every account, whatever was asked."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.asked: list[dict[str, str]] = []

    def handle_accounts(self, headers: Mapping[str, str], query: Mapping[str, str]) -> SimResponse:
        self.asked.append(dict(query))
        paging = {k: v for k, v in query.items() if k in ("page", "page_size")}
        return super().handle_accounts(headers, paging)


async def test_only_the_providers_and_owners_asked_for_are_tracked(
    redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    sim = IgnoresFilters(api_key=API_KEY)
    _, rx_url = receiver
    sim.link_account("acc_1", provider="docebo", origin_owner_id="cust_a")
    sim.link_account("acc_2", provider="cornerstone", origin_owner_id="cust_a")
    sim.link_account("acc_3", provider="docebo", origin_owner_id="cust_b")
    sim.link_account("acc_4", provider="docebo", origin_owner_id="cust_c")
    for account in ("acc_1", "acc_2", "acc_3", "acc_4"):
        seed(sim, account, users=1, count=1)
    async with served(sim) as lms_url:
        settings = settings_for(
            redis_server.url,
            lms_url,
            rx_url,
            providers=["docebo"],
            origin_owner_ids=["cust_a", "cust_b"],
        )
        async with driven(settings, sim) as service:
            await service.step(0.0)
            assert await read_now(service.service) == {"acc_1", "acc_3"}
    assert set(await linked(redis)) == {"acc_1", "acc_3"}
    # one listing per owner, each asking for the providers
    assert {(q["providers"], q["origin_owner_id"]) for q in sim.asked} == {
        ("docebo", "cust_a"),
        ("docebo", "cust_b"),
    }
    assert asked(sim, "acc_2") == asked(sim, "acc_4") == []


async def test_a_listing_that_fails_or_drops_most_accounts_changes_nothing_until_a_second_agrees(
    redis: Redis, world: World
) -> None:
    sim, rx = world.sim, world.rx
    everyone = {"acc_1", "acc_2", "acc_3", "acc_4"}
    for account in everyone:
        seed(sim, account, users=1)
    async with driven(world.settings(), sim) as service:
        await service.step(0.0)
        assert await read_now(service.service) == everyone
        sim.faults.forced.append({"status": 400, "accounts": True})  # a listing that fails
        await service.step(INTERVAL)
        sim.faults.forced.append({"wrong_shape": True, "accounts": True})  # not an array
        await service.step(INTERVAL)
        assert await read_now(service.service) == everyone
        assert service.service.metrics.poll_failures.labels("malformed")._value.get() == 1
        sim.faults.accounts_limit = 1  # cut short: three of four missing
        await service.step(INTERVAL)
        assert await read_now(service.service) == everyone  # held
        sim.faults.accounts_limit = None  # the next listing disagrees: nothing goes
        await service.step(INTERVAL)
        assert set(await linked(redis)) == everyone
        sim.faults.accounts_limit = 0  # `[]`
        await service.step(INTERVAL)
        assert await read_now(service.service) == everyone  # held again
        sim.faults.accounts_limit = 0  # a second `[]` an interval later agrees
        await service.step(INTERVAL)
        assert await read_now(service.service) == set()
        assert await linked(redis) == {}
    assert rx.events == []


async def test_an_account_without_id_is_counted_and_skipped_and_forgets_nobody(
    redis: Redis, world: World
) -> None:
    sim = world.sim
    for account in ("acc_1", "acc_2"):
        seed(sim, account, users=1)
    async with driven(world.settings(), sim) as service:
        await service.step(0.0)
        sim.faults.forced.append({"missing_id": True, "accounts": True})
        await service.step(INTERVAL)
        skipped = service.service.metrics.records_skipped.labels("account_without_id")
        assert skipped._value.get() == 1
        assert await read_now(service.service) == {"acc_1", "acc_2"}


async def test_two_processes_agree_on_the_accounts_discovered(
    redis: Redis,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(directory, "SHARED_FOR", 0.0)  # each look at the counter is fresh
    sim, rx = world.sim, world.rx
    for account in ("acc_1", "acc_2", "acc_3"):
        seed(sim, account, users=1)
    settings = world.settings()
    clock = Clock()
    sim.clock = clock
    async with two_processes(settings, clock) as (one, two):
        assert one.linked is not None and two.linked is not None
        assert await one.linked.run_once() == 1
        assert await two.linked.run_once() == 0  # not due: one listing for both
        assert await read_now(two) == {"acc_1", "acc_2", "acc_3"}
        sim.unlink_account("acc_3")
        sim.link_account("acc_4")
        seed(sim, "acc_4", users=1)
        clock.advance(INTERVAL)
        assert await two.linked.run_once() == 1
        assert await read_now(one) == await read_now(two) == {"acc_1", "acc_2", "acc_4"}
        sim.clear_requests()
        for service in (one, two):
            for scheduler in service.schedulers():
                await scheduler.run_once()
        assert asked(sim, "acc_3") == [] and asked(sim, "acc_4") != []
    assert rx.events == []


async def test_a_process_with_a_stale_view_does_not_read_an_account_another_forgot(
    redis: Redis,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each process caches the accounts it reads: one that has not looked again since
    another forgot an account must not put it back on the schedules and read it."""
    monkeypatch.setattr(directory, "SHARED_FOR", 3600.0)  # two looks again only when told
    sim, rx = world.sim, world.rx
    for account in ("acc_1", "acc_2", "acc_3"):
        seed(sim, account, users=1)
    settings = world.settings(defaults={"users": "all", "strategy": "per_user"})
    clock = Clock()
    sim.clock = clock
    async with two_processes(settings, clock) as (one, two):
        assert one.linked is not None
        await one.linked.run_once()
        assert await read_now(two) == {"acc_1", "acc_2", "acc_3"}  # two's view, kept
        for scheduler in one.schedulers():
            await scheduler.run_once()
        sim.unlink_account("acc_3")
        for _ in range(2):  # left out twice, an interval apart: one forgets it
            clock.advance(INTERVAL)
            await one.linked.run_once()
        sim.clear_requests()
        clock.advance(2.0)
        for scheduler in two.schedulers():  # its view still has acc_3
            await scheduler.run_once()
        assert asked(sim, "acc_3") == []
        assert await redis_mentions(redis, "acc_3") == []
        two.stores.accounts.forget_cache()  # it looks again: on it goes, without acc_3
        for scheduler in two.schedulers():
            await scheduler.run_once()
        assert asked(sim, "acc_3") == [] and asked(sim, "acc_1") != []
    assert rx.events == []


async def test_an_account_refused_on_its_listing_backs_off_longer_each_time(
    redis: Redis, world: World
) -> None:
    """Its feed only waits for the listing, and asks nothing: that ends no back-off."""
    sim = world.sim
    seed(sim, ACCOUNT)
    refused = {"status": 401, "account_id": ACCOUNT, "path": "/users"}
    sim.faults.forced.extend(dict(refused) for _ in range(5))
    async with driven(world.settings(), sim) as service:
        polls = service.service.stores.polls
        feeds, listings = service.service.feeds, service.service.listings
        assert feeds is not None and listings is not None
        await service.step(0.0)
        assert (await polls.backed_off_accounts())[ACCOUNT].failures == 1
        for failures in (2, 3):
            service.clock.advance(300.0 * 2 ** (failures - 2) + 60.0)  # past the back-off
            await feeds.run_once()  # first: its wait for the listing ends nothing
            await listings.run_once()  # the probe, refused again
            backoff = (await polls.backed_off_accounts()).get(ACCOUNT)
            assert backoff is not None and backoff.failures == failures
            assert backoff.until - service.clock() > 300.0 * 2 ** (failures - 2)
        assert not [r for r in sim.requests if r.account_id == ACCOUNT and "/users" not in r.path]


async def test_a_refused_listing_of_the_linked_accounts_backs_off_no_account(
    redis: Redis, world: World
) -> None:
    """GET /accounts is the key's own listing: its member `*` is no account."""
    sim = world.sim
    seed(sim, ACCOUNT)
    sim.faults.forced.append({"status": 401, "accounts": True})
    async with driven(world.settings(), sim) as service:
        await service.step(0.0)
        unavailable = {"status": 503, "accounts": True}
        sim.faults.forced.extend(dict(unavailable) for _ in range(20))  # past the retries
        await service.step(INTERVAL * 100)  # after its own back-off
        assert await service.service.stores.polls.backed_off_accounts() == {}
        assert await redis.hkeys(keys.FAILING_ACCOUNTS) == []  # no run of failures counted
        assert await read_now(service.service) == set()  # nothing listed yet


async def test_credentials_of_linked_accounts_are_never_kept_logged_or_shown(
    redis: Redis, world: World
) -> None:
    sim = world.sim
    seed(sim, ACCOUNT)
    sim.link_account(ACCOUNT, status="error", status_reasons=["re-authenticate"])
    sim.link_account("acc_2")
    seed(sim, "acc_2")
    assert CREDENTIAL_MARK in json.dumps(sim.linked.record(ACCOUNT))
    settings = world.settings()
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim, http=True) as service:
            await service.step(0.0)
            sim.unlink_account("acc_2")
            await service.step(INTERVAL)
            assert service.service.http_url is not None
            async with aiohttp.ClientSession(base_url=service.service.http_url) as http:
                auth = {"Authorization": f"Bearer {TOKEN}"}
                async with http.get("/admin/accounts", headers=auth) as response:
                    assert response.status == 200
                    admin = await response.text()
                async with http.get("/metrics") as response:
                    metrics = await response.text()
    assert "linked_accounts_listed" in str(logs)
    for secret in (CREDENTIAL_MARK, "hunter2"):
        assert secret not in str(logs)
        assert secret not in admin and secret not in metrics
        assert await redis_mentions(redis, secret) == []
    assert "credentials" not in str(await linked(redis))


async def test_an_account_that_is_no_lms_account_is_skipped_and_tried_again_daily(
    redis: Redis,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(directory, "SHARED_FOR", 0.0)  # the day passes on the test's clock
    sim, rx = world.sim, world.rx
    seed(sim, ACCOUNT)
    sim.link_account("acc_hris", not_lms=True)
    seed(sim, "acc_hris")
    with structlog.testing.capture_logs() as logs:
        async with driven(world.settings(), sim) as service:
            await service.step(0.0)
            assert asked(sim, "acc_hris") == ["/unified/lms/users"]  # its first read: 404
            retry_at = await redis.zscore(keys.NOT_LMS_ACCOUNTS, "acc_hris")
            assert retry_at is not None and retry_at > (service.clock() + 23 * 3600) * 1000
            assert await read_now(service.service) == {ACCOUNT}
            sim.clear_requests()
            for _ in range(3):
                await service.step(INTERVAL)
            assert asked(sim, "acc_hris") == [] and asked(sim, ACCOUNT) != []
            service.clock.advance(24 * 3600)
            await service.step(0.0)
            assert asked(sim, "acc_hris") == ["/unified/lms/users"]  # tried again, a day on
            assert await read_now(service.service) == {ACCOUNT}
    assert [e["event"] for e in logs].count("account_not_lms") == 2  # once a day
    assert rx.events == []


# how acc_x's read answers (its listing's, or its feed's): what each leaves of the account
# when it is written after the account was forgotten
READ_ANSWERS: dict[str, list[dict[str, Any]]] = {
    "not_lms": [],  # a not-LMS mark
    "refused": [{"status": 401}],  # a back-off
    "unavailable": [{"status": 503}] * 4,  # past the client's retries: a failure counted
    "provider_limited": [{"status": 429, "retry_after": 30, "provider_errors": True}],  # a pause
    "feed_unsupported": [{"status": 404, "path": "/lms/assignments"}],  # a feed fallback
    "completions_unserved": [{"status": 404, "path": "/lms/completions"}],  # an unserved mark
}
# the path of the request the account is forgotten during (its listing's, but for answers
# of its feeds), and what its read tracks
FORGOTTEN_DURING = {"feed_unsupported": "/lms/assignments", "completions_unserved": "/completions"}
TRACKS = {"completions_unserved": ["assignments", "completions"]}


@pytest.mark.parametrize("answer", list(READ_ANSWERS))
async def test_a_read_in_flight_when_its_account_is_forgotten_leaves_nothing_of_it(
    answer: str, redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    """Its first read (its listing's; its feed's for the feed's own answer) answers after
    listings forgot it: that it is no LMS account, refused, unavailable, its provider asking
    it to wait, no feed, no completions: no not-LMS mark, back-off, failure count, pause,
    feed fallback or unserved mark of it is left, which nothing would clear, nor shown by
    the gauges or the admin API."""
    sim = WhileAnswering(api_key=API_KEY)
    for account in ("acc_1", "acc_2"):
        seed(sim, account, users=1)
    sim.link_account("acc_x", not_lms=answer == "not_lms")
    seed(sim, "acc_x", users=1)
    sim.faults.forced += [{**fault, "account_id": "acc_x"} for fault in READ_ANSWERS[answer]]
    track = TRACKS.get(answer, ["assignments"])
    defaults = {"users": "all", "strategy": "auto", "track": track}
    async with (
        served(sim) as lms_url,
        driven(
            settings_for(redis_server.url, lms_url, receiver[1], defaults=defaults), sim
        ) as service,
    ):
        linked = service.service.linked
        assert linked is not None
        await linked.run_once()
        assert await read_now(service.service) == {"acc_1", "acc_2", "acc_x"}

        async def forget() -> None:  # left out twice, an interval apart: forgotten
            sim.unlink_account("acc_x")
            for _ in range(2):
                service.clock.advance(INTERVAL)
                await linked.run_once()
            assert await redis.scard(keys.FORGET_ACCOUNTS) == 0

        sim.account, sim.meanwhile = "acc_x", forget  # a listing forgets it meanwhile
        sim.path = FORGOTTEN_DURING.get(answer, "/lms/users")
        await service.step(0.0)  # acc_x's first read: forgotten meanwhile
        assert sim.meanwhile is None and "/unified/lms/users" in asked(sim, "acc_x")
        assert sim.faults.forced == []  # each answered as told
        operations = service.service.operations
        rows = as_json(await operations.accounts())
        backed_off = as_json(await operations.users())["backed_off_accounts"]
        await operations.refresh_gauges()
        metrics = service.service.metrics.registry
        assert await redis_mentions(redis, "acc_x") == []
    assert [row["account_id"] for row in rows] == ["acc_1", "acc_2"]
    assert backed_off == {}
    assert metrics.get_sample_value("lms_webhooks_accounts_backed_off") == 0
    assert metrics.get_sample_value("lms_webhooks_accounts_fallen_back") == 0
    for state in ("not_lms", "backed_off"):
        labels = {"state": state, "source": "discovery"}
        assert metrics.get_sample_value("lms_webhooks_accounts", labels) == 0


async def test_a_config_account_keeps_its_auto_fallback_beside_discovery(
    redis: Redis, world: World
) -> None:
    sim = world.sim
    seed(sim, ACCOUNT)
    sim.faults.account_endpoint_status = 404  # no account-wide assignments: per user
    config = [{"account_id": ACCOUNT, "users": ["u_1"], "strategy": "auto"}]
    settings = world.settings(accounts=config)
    async with driven(settings, sim) as service:
        await service.step(0.0)
        await service.step(0.5)
    assert await redis.hexists(keys.FEED_FALLBACK, ACCOUNT)
    assert await redis.zcard(keys.NOT_LMS_ACCOUNTS) == 0


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("account_discovery:\n  enabled: true\n  intervall: 5m\n", "account_discovery.intervall"),
        ("account_discovery:\n  enabled: true\n  interval: 0\n", "account_discovery.interval"),
    ],
)
def test_bad_account_discovery_exits_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], section: str, key: str
) -> None:
    err = check_config_exit(tmp_path, MINIMAL + section, capsys)
    assert key in err


def test_account_discovery_passes_check_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "ok.yaml"
    path.write_text(MINIMAL + "account_discovery:\n  enabled: true\n  providers: [docebo]\n")
    assert main(["check-config", "--config", str(path)]) == 0


DISCOVERING = Path(__file__).resolve().parent.parent / "config" / "test.yaml"


@pytest.mark.slow
async def test_kill_during_discovery_loses_nothing_and_sends_nothing_again(
    redis: Redis, world: World, tmp_path: Path
) -> None:
    sim, rx = world.sim, world.rx
    seed(sim, "acc_1")
    seed(sim, "acc_2")
    config = tmp_path / "discovering.yaml"
    text = (
        DISCOVERING.read_text()
        .replace(
            "accounts:\n  - account_id: acc_1\n    users: [u_1, u_2]\n",
            "accounts: []\naccount_discovery:\n  enabled: true\n  interval: 2s\n",
        )
        .replace("  interval: 500ms\n", "  interval: 500ms\n  account_interval: 500ms\n")
    )
    assert "account_discovery" in text and "account_interval: 500ms" in text
    config.write_text(text)
    sim.faults.forced.append({"delay": 60, "accounts": True})  # the first listing hangs
    process = RunProcess(*world.urls, tmp_path / "run.log", str(config))
    try:
        process.start()
        await wait_until(lambda: _listing_asked(sim), 20, "a listing under way")
        process.kill()  # cut off before its commit
        assert await redis.hlen(keys.LINKED_ACCOUNTS) == 0
        process.start()  # the listing's lease runs out (LEASE_SECONDS): listed again
        await wait_until(lambda: _baselined(redis, "acc_2"), 30, "acc_2 baselined")
        sim.progress("acc_2", "u_1", "acc_2_u_1_a1", 100)
        await wait_until(lambda: of_kind(rx, ev.COMPLETED), 30, "the change sent")
        await queue_drained(redis)
        assert process.stop() == 0
    finally:
        process.ensure_stopped()
    assert set(await redis.hkeys(keys.LINKED_ACCOUNTS)) == {"acc_1", "acc_2"}
    assert {e.data["assignment_id"] for e in rx.events} == {"acc_2_u_1_a1"}
    assert len(of_kind(rx, ev.COMPLETED)) == 1
    assert len({e.webhook_id for e in rx.events}) == len(rx.events)  # none sent twice


async def _listing_asked(sim: SimLMS) -> bool:
    return any(r.path == "/accounts" for r in sim.requests)


async def _baselined(redis: Redis, account_id: str) -> bool:
    return await redis.hget(keys.user_state(account_id, "u_1"), "baselined") == "1"


def test_the_simulator_lists_linked_accounts_by_page_and_filter() -> None:
    sim = SimLMS(api_key=API_KEY)
    for n in range(1, 6):
        sim.link_account(f"acc_{n}", provider="docebo" if n % 2 else "cornerstone")
    sim.unlink_account("acc_5")
    auth = sim.auth_headers()

    def ids(query: MultiDict[str]) -> list[str]:
        answer = sim.handle_accounts(auth, query)
        assert answer.status == 200
        return [a["id"] for a in answer.json()]

    assert ids(MultiDict(page_size="3")) == ["acc_1", "acc_2", "acc_3"]
    assert ids(MultiDict(page_size="3", page="2")) == ["acc_4"]  # shorter: the last
    assert ids(MultiDict([("providers", "docebo"), ("providers", "x")])) == ["acc_1", "acc_3"]
    assert ids(MultiDict(providers="cornerstone,x")) == ["acc_2", "acc_4"]
    assert ids(MultiDict(origin_owner_id="owner_acc_2", account_ids="acc_2,acc_3")) == ["acc_2"]
    listed = sim.handle_accounts(auth, MultiDict()).json()[0]
    assert CREDENTIAL_MARK in json.dumps(listed["credentials"])
    assert sim.handle_accounts({}, MultiDict()).status == 401
    assert sim.handle_accounts(auth, MultiDict(page="0")).status == 400
