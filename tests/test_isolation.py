"""One account's trouble never holds the others (CONTRACT §8 "Isolation"): a 429 its provider
answered (`provider_errors` in the body) pauses only that account, for its Retry-After, in
every process; StackOne's own 429 still pauses the key; at most ACCOUNT_IN_FLIGHT requests
of one account are in flight in one process."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from email.utils import formatdate
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.app import Service
from service.changes import events as ev
from service.config import Settings, StackOneSettings
from service.errors import UpstreamProviderLimited, UpstreamRateLimited
from service.metrics import Metrics
from service.reading.runner import ACCOUNT_FAILURES
from service.reading.schedule import account_share, deferred_claims
from service.sim.faults import parse_fault_spec
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from service.store import keys
from service.store.limits import SharedLimiter, api_key_rate
from service.store.polls import AccountBackoff
from service.upstream.accounts import ACCOUNT_IN_FLIGHT, AccountSlots
from service.upstream.client import (
    DEFAULT_RETRY_AFTER,
    MAX_RETRY_AFTER,
    StackOneClient,
    error_for_status,
)
from tests.helpers import (
    API_KEY,
    Clock,
    Driven,
    WhileAnswering,
    as_json,
    driven,
    endpoint,
    make_settings,
    of_type,
    served,
    two_processes,
)
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]
PROVIDER_429 = {"status": 429, "retry_after": "30", "provider_errors": True, "account_id": "acc_2"}
NOW = 1_700_000_000.0


def body(value: Any) -> bytes:
    return value if isinstance(value, bytes) else json.dumps(value).encode()


# -- which 429 is whose --


@pytest.mark.parametrize(
    "raw",
    [
        {"statusCode": 429, "provider_errors": [{"status": 429, "url": "u", "raw": {}}]},
        {"provider_errors": ["anything"]},
    ],
)
def test_a_429_with_provider_errors_limits_only_the_account(raw: Any) -> None:
    error = error_for_status(429, "30", NOW, body(raw))
    assert isinstance(error, UpstreamProviderLimited) and error.retry_after == 30.0
    assert not isinstance(error, UpstreamRateLimited)  # not the key's: no shared pause


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b'{"provider_errors": [',
        [{"provider_errors": [1]}],
        "provider_errors",
        {"statusCode": 429, "message": "Too many requests"},
        {"provider_errors": []},
        {"provider_errors": None},
        {"provider_errors": {"status": 429}},
        {"provider_errors": "429"},
        {"provider_errors": 1},
    ],
)
def test_any_other_429_body_is_the_keys_own(raw: Any) -> None:
    error = error_for_status(429, "30", NOW, body(raw))
    assert type(error) is UpstreamRateLimited and error.retry_after == 30.0


def test_a_providers_retry_after_reads_as_the_keys_does() -> None:
    raw = body({"provider_errors": [{"status": 429}]})
    date = formatdate(NOW + 42, usegmt=True)
    cases = {date: 42.0, None: DEFAULT_RETRY_AFTER, "soon": DEFAULT_RETRY_AFTER, "99999": 600.0}
    for header, seconds in cases.items():
        error = error_for_status(429, header, NOW, raw)
        assert isinstance(error, UpstreamProviderLimited) and error.retry_after == seconds
    assert MAX_RETRY_AFTER == 600.0
    # a 408 is StackOne's own timeout, whatever its body says
    assert type(error_for_status(408, "3", NOW, raw)) is UpstreamRateLimited


def test_the_simulator_answers_a_providers_429_for_one_account_only() -> None:
    sim = SimLMS(api_key=API_KEY)
    for account in ("acc_1", "acc_2"):
        sim.put_assignment(account, "u_1", {"id": "a1"})
    sim.faults.forced.append(parse_fault_spec(PROVIDER_429))
    first = sim.handle_list("u_1", sim.auth_headers("acc_1"), {})
    assert first.status == 200  # acc_1 passes acc_2's fault by
    limited = sim.handle_list("u_1", sim.auth_headers("acc_2"), {})
    assert limited.status == 429 and limited.headers["Retry-After"] == "30"
    assert limited.json()["provider_errors"][0]["status"] == 429
    assert sim.handle_list("u_1", sim.auth_headers("acc_2"), {}).status == 200  # consumed
    for bad in (
        {"status": 429, "provider_errors": False},
        {"delay": 1, "provider_errors": True},
        {"status": 429, "account_id": ""},
    ):
        with pytest.raises(ValueError):
            parse_fault_spec(bad)
    assert parse_fault_spec({"status": 429, "retry_after": 5}) == {"status": 429, "retry_after": 5}


# -- the schedule --


def test_a_paused_account_is_deferred_past_its_pause_and_the_others_are_not() -> None:
    members = ["acc_1:u_1", "acc_2:u_1", "acc_2"]
    paused = {"acc_2": NOW + 30}
    deferred = deferred_claims(members, {}, {}, cap=None, now=NOW, interval=0.5, paused=paused)
    assert set(deferred) == {"acc_2:u_1", "acc_2"}
    # each waits for the pause's end, spread over the (half-second) interval
    assert all(NOW + 30 <= due < NOW + 30.5 for due in deferred.values())
    over = deferred_claims(members, {}, {}, cap=None, now=NOW + 30, interval=0.5, paused=paused)
    assert over == {}  # the pause is over


def test_one_account_holds_at_most_twice_its_requests_in_poll_slots() -> None:
    assert account_share(8, 1) is None  # the only account: nobody to hold slots from
    assert account_share(8, 2) == 4
    assert account_share(64, 2) == 2 * ACCOUNT_IN_FLIGHT  # half of them before
    assert account_share(3, 5) == 2
    assert account_share(1, 5) == 1


async def test_account_slots_are_dropped_when_idle() -> None:
    slots = AccountSlots()
    inside = 0
    most = 0

    async def request(account: str) -> None:
        nonlocal inside, most
        async with slots.slot(account):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(request("slow") for _ in range(7)))
    assert most == ACCOUNT_IN_FLIGHT
    assert len(slots) == 0  # only accounts with requests in flight or waiting are held


# -- the client: the key's pause against the account's --


@pytest.fixture
async def stackone(
    redis: Redis, lms: tuple[SimLMS, str]
) -> AsyncIterator[tuple[StackOneClient, SimLMS, Metrics]]:
    sim, url = lms
    for account in ("acc_1", "acc_2"):
        sim.put_assignment(account, "u_1", {"id": f"{account}_a1"})
    settings = StackOneSettings(base_url=url, api_key=API_KEY, page_size=2)  # type: ignore[arg-type]
    rate = SharedLimiter(redis).rate(api_key_rate(settings.max_requests_per_minute))
    metrics = Metrics()
    async with aiohttp.ClientSession() as session:
        yield StackOneClient(session, settings, rate, metrics), sim, metrics


async def read(client: StackOneClient, account: str) -> int:
    return sum([len(page.records) async for page in client.account_pages(account, None)])


def requests_of(sim: SimLMS, account: str) -> int:
    return sum(1 for r in sim.requests if r.account_id == account)


def pauses(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "lms_webhooks_upstream_pauses_total", {"reason": reason}
    )
    return value or 0.0


async def test_a_providers_429_ends_the_read_and_pauses_only_its_account(
    stackone: tuple[StackOneClient, SimLMS, Metrics], redis: Redis
) -> None:
    client, sim, metrics = stackone
    sim.faults.forced.append(parse_fault_spec(PROVIDER_429))
    with pytest.raises(UpstreamProviderLimited) as raised:
        await read(client, "acc_2")
    assert raised.value.retry_after == 30.0
    assert requests_of(sim, "acc_2") == 1  # not retried at once
    assert await redis.exists(keys.UPSTREAM_PAUSE) == 0  # the key is not paused
    assert await read(client, "acc_1") == 1  # the other account goes on
    with pytest.raises(UpstreamProviderLimited):  # nor asked again by a read under way here
        await read(client, "acc_2")
    assert requests_of(sim, "acc_2") == 1
    assert (pauses(metrics, "provider"), pauses(metrics, "key")) == (1.0, 0.0)


async def test_a_429_without_provider_errors_still_pauses_the_key_for_every_account(
    stackone: tuple[StackOneClient, SimLMS, Metrics], redis: Redis
) -> None:
    client, sim, metrics = stackone
    sim.faults.forced.append({"status": 429, "retry_after": "2", "account_id": "acc_2"})
    limited = asyncio.create_task(read(client, "acc_2"))

    async def key_paused() -> int:
        return int(await redis.pttl(keys.UPSTREAM_PAUSE))

    while (left_ms := await key_paused()) <= 0:
        assert not limited.done()
        await asyncio.sleep(0.01)
    started = time.monotonic()
    assert await read(client, "acc_1") == 1
    assert time.monotonic() - started >= left_ms / 1000 - 0.05  # acc_1 waited out the pause
    assert await limited == 1  # acc_2's request was retried after the pause, as before
    assert (pauses(metrics, "provider"), pauses(metrics, "key")) == (0.0, 1.0)


# -- the service, driven --


def two_accounts(redis_url: str, lms_url: str, rx_url: str, strategy: str, **extra: Any) -> Any:
    """One user each: acc_2's one read takes its provider's 429, whichever strategy."""
    accounts = [
        {"account_id": account, "users": ["u_1"], "strategy": strategy}
        for account in ("acc_1", "acc_2")
    ]
    polling = {"interval": "500ms", "account_interval": "500ms", **extra.pop("polling", {})}
    return make_settings(
        redis_url, lms_url, [endpoint(rx_url)], [], accounts=accounts, polling=polling, **extra
    )


def seed_two(sim: SimLMS) -> None:
    for account in ("acc_1", "acc_2"):
        sim.put_assignment(account, "u_1", {"id": f"{account}_u_1"})
        sim.progress(account, "u_1", f"{account}_u_1", 0)


def delivered(rx: Receiver) -> list[str]:
    return [e.data["assignment_id"] for e in of_type(rx.events, ev.PROGRESS_CHANGED)]


async def change_and_step(service: Driven, sim: SimLMS, pct: int, seconds: float) -> None:
    for account in ("acc_1", "acc_2"):
        sim.progress(account, "u_1", f"{account}_u_1", pct)
    await service.step(seconds)


@pytest.mark.parametrize("strategy", ["per_user", "account"])
async def test_a_providers_429_holds_only_its_account_until_its_retry_after(
    strategy: str, redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_two(sim)
    async with driven(two_accounts(redis_server.url, lms_url, rx_url, strategy), sim) as service:
        await service.baseline()
        sim.clear_requests()
        sim.faults.forced.append(parse_fault_spec(PROVIDER_429))
        await change_and_step(service, sim, 10, 0.5)
        assert delivered(rx) == ["acc_1_u_1"]
        assert any(r.account_id == "acc_2" and r.status == 429 for r in sim.requests)
        [_, acc_2] = as_json(await service.service.operations.accounts())
        assert acc_2["paused_until"] == pytest.approx(service.clock() + 30, abs=1)
        assert await redis.exists(keys.UPSTREAM_PAUSE) == 0
        asked_acc_2 = requests_of(sim, "acc_2")
        for pct in (20, 30, 40):  # 25 s on: acc_1 at full speed, acc_2 not asked
            await change_and_step(service, sim, pct, 8.0 if pct == 20 else 8.5)
            assert delivered(rx)[-1] == "acc_1_u_1"
        assert delivered(rx) == ["acc_1_u_1"] * 4
        assert requests_of(sim, "acc_2") == asked_acc_2
        await service.step(5.0)  # past its Retry-After (and the spread of its reads)
        await service.step(0.5)
        assert delivered(rx).count("acc_2_u_1") == 1  # its change, once, at its latest
        [_, acc_2] = as_json(await service.service.operations.accounts())
        assert acc_2["paused_until"] is None
    acc_2 = [e for e in of_type(rx.events, ev.PROGRESS_CHANGED) if e.data["account_id"] == "acc_2"]
    assert [e.data["assignment"]["progress"] for e in acc_2] == [40]


@pytest.mark.parametrize("strategy", ["per_user", "account"])
async def test_a_read_that_succeeds_ends_a_back_off_begun_while_it_was_in_flight(
    strategy: str, redis_server: RedisServer, redis: Redis, receiver: Rx
) -> None:
    """acc_2 is backed off (as another process's refused read would) while one of its reads
    is in flight, and that read succeeds: the account answered, so the back-off ends with
    it, and acc_2's next change is read an interval on, not once the back-off is over."""
    sim = WhileAnswering(api_key=API_KEY)
    rx, rx_url = receiver
    seed_two(sim)
    async with (
        served(sim) as lms_url,
        driven(two_accounts(redis_server.url, lms_url, rx_url, strategy), sim) as service,
    ):
        await service.baseline()
        polls = service.service.stores.polls

        async def back_off() -> None:  # as another process's read of acc_2 writes it
            backoff = AccountBackoff(service.clock() + 30.0, 1, "upstream answered 401")
            await polls.redis.hset(keys.BLOCKED_ACCOUNTS, "acc_2", backoff.encode())

        sim.account, sim.path, sim.meanwhile = "acc_2", "/assignments", back_off
        await change_and_step(service, sim, 10, 0.5)
        assert sim.meanwhile is None  # written while its read was in flight
        assert await polls.account_backoff("acc_2") is None
        await change_and_step(service, sim, 20, 0.5)
    acc_2 = [e for e in of_type(rx.events, ev.PROGRESS_CHANGED) if e.data["account_id"] == "acc_2"]
    assert [e.data["assignment"]["progress"] for e in acc_2] == [10, 20]


async def test_one_account_never_has_more_than_two_requests_in_flight(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """A slow provider (every answer held 0.3 s) beside a fast one, polled per user: the slow
    account's requests are 2 at a time in this process (4 before: half the slots), and the
    fast account's change is delivered in the same step."""
    sim, lms_url = lms
    rx, rx_url = receiver
    for user in range(1, 9):
        sim.put_assignment("slow", f"u_{user}", {"id": f"s{user}"})
    sim.put_assignment("fast", "u_1", {"id": "f1"})
    sim.progress("fast", "u_1", "f1", 0)
    accounts = [
        {"account_id": "slow", "users": [f"u_{n}" for n in range(1, 9)]},
        {"account_id": "fast", "users": ["u_1"]},
    ]
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=accounts,
        polling={"interval": "500ms", "concurrency": 8},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.faults.account_delays = {"slow": 0.3}
        sim.max_in_flight.clear()
        sim.progress("fast", "u_1", "f1", 50)
        await service.step(0.5)
        assert sim.max_in_flight["slow"] == ACCOUNT_IN_FLIGHT
        assert delivered(rx) == ["f1"]


@pytest.fixture
def failing(
    lms: tuple[SimLMS, str], receiver: Rx, monkeypatch: pytest.MonkeyPatch
) -> tuple[SimLMS, str, Receiver, str]:
    """The simulator and the receiver (and their URLs), the client's retries going at once
    (their real waits are not what reads failing in a row are about)."""
    monkeypatch.setattr("service.upstream.client._exponential", lambda state: 0.0)
    return (*lms, *receiver)


async def test_an_accounts_reads_failing_in_a_row_back_off_that_account_only(
    redis_server: RedisServer, redis: Redis, failing: tuple[SimLMS, str, Receiver, str]
) -> None:
    """acc_2's provider answers 503 to everything: after ACCOUNT_FAILURES reads failed in a
    row its users are no longer asked (each read cost the client's retries of the key's
    budget), acc_1 goes on; once the provider is back, one probe ends the back-off."""
    sim, lms_url, rx, rx_url = failing
    users = [f"u_{n}" for n in range(1, ACCOUNT_FAILURES + 2)]
    for user in users:
        sim.put_assignment("acc_2", user, {"id": f"acc_2_{user}"})
    sim.put_assignment("acc_1", "u_1", {"id": "acc_1_u_1"})
    sim.progress("acc_1", "u_1", "acc_1_u_1", 0)
    accounts = [
        {"account_id": "acc_1", "users": ["u_1"]},
        {"account_id": "acc_2", "users": users},
    ]
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        [],
        accounts=accounts,
        polling={"interval": "500ms", "concurrency": 16},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.faults.forced = [{"status": 503, "account_id": "acc_2"}] * 1000
        for _ in range(3):  # at most ACCOUNT_POLLS of acc_2's polls a step
            await service.step(0.5)
        [_, acc_2] = as_json(await service.service.operations.accounts())
        # once: reads already under way when it began did not back it off again
        assert acc_2["backoff"]["failures"] == 1
        assert acc_2["backoff"]["until"] == pytest.approx(service.clock() + 30, abs=1.5)
        sim.clear_requests()
        for pct in (10, 20):  # acc_1 goes on at its pace; acc_2 is not asked meanwhile
            sim.progress("acc_1", "u_1", "acc_1_u_1", pct)
            await service.step(10.0)
        assert requests_of(sim, "acc_2") == 0
        assert [
            e.data["assignment"]["progress"] for e in of_type(rx.events, ev.PROGRESS_CHANGED)
        ] == [
            10,
            20,
        ]
        sim.faults.forced = []  # the provider is back: the next read probes it
        sim.progress("acc_2", "u_1", "acc_2_u_1", 50)
        await service.step(11.0)
        await service.step(1.0)
        [_, acc_2] = as_json(await service.service.operations.accounts())
        assert acc_2["backoff"] is None
        assert await redis.hexists(keys.FAILING_ACCOUNTS, "acc_2") == 0
    changed = [e.data["assignment_id"] for e in of_type(rx.events, ev.PROGRESS_CHANGED)]
    assert changed.count("acc_2_u_1") == 1


async def read_user(service: Service, user: str) -> None:
    """One read of acc_2's `user` by this process's user schedule, start to end."""
    scheduler = service.scheduler
    assert scheduler is not None
    member = keys.user_member("acc_2", user)
    [lease] = [x for x in await scheduler.leases.claim(1, [member]) if x.member == member]
    await scheduler.runner.run(lease)


def one_account(redis_url: str, lms_url: str, rx_url: str, users: list[str]) -> Settings:
    accounts = [{"account_id": "acc_2", "users": users, "strategy": "per_user"}]
    return make_settings(
        redis_url, lms_url, [endpoint(rx_url)], [], accounts=accounts, polling={"interval": "1s"}
    )


async def test_a_success_in_another_process_ends_the_run_of_failures(
    redis_server: RedisServer, redis: Redis, failing: tuple[SimLMS, str, Receiver, str]
) -> None:
    """Back-off after ACCOUNT_FAILURES reads failing IN A ROW, whichever process reads: a
    success in another process (whose view of the failing accounts predates the failures)
    ends the run, so failures on either side of it do not add up."""
    sim, lms_url, _, rx_url = failing
    users = [f"u_{n}" for n in range(1, 2 * ACCOUNT_FAILURES + 1)]
    for user in users:
        sim.put_assignment("acc_2", user, {"id": f"acc_2_{user}"})
    settings = one_account(redis_server.url, lms_url, rx_url, users)
    clock = Clock()
    async with two_processes(settings, clock) as (one, two):
        polls = one.stores.polls
        for scheduler in one.schedulers():
            await scheduler.sync_users()
        clock.advance(1.0)  # every user due
        failing, answered = users[: 2 * ACCOUNT_FAILURES - 2], users[-1]
        sim.faults.forced = [{"status": 503, "account_id": "acc_2"}] * 1000
        for user in failing[: ACCOUNT_FAILURES - 1]:
            await read_user(one, user)
        sim.faults.forced = []
        await read_user(two, answered)  # acc_2 answers, in the other process
        sim.faults.forced = [{"status": 503, "account_id": "acc_2"}] * 1000
        for user in failing[ACCOUNT_FAILURES - 1 :]:
            await read_user(one, user)
        assert await polls.account_backoff("acc_2") is None  # 4 in a row, twice
        await read_user(one, users[-2])  # the 5th in a row
        backoff = await polls.account_backoff("acc_2")
        assert backoff is not None and backoff.failures == 1


async def test_a_refused_read_reads_its_own_accounts_back_off_not_every_accounts(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: Rx,
) -> None:
    """With hundreds of accounts backed off at once (a StackOne outage), each failed read
    reads its own account's back-off: what Redis sends it stays small."""
    sim, lms_url = lms
    sim.put_assignment("acc_2", "u_1", {"id": "acc_2_u_1"})
    settings = one_account(redis_server.url, lms_url, receiver[1], ["u_1"])
    others = {f"acc_other_{n}": f'{{"until": 1, "failures": 1, "error": "{"x" * 200}"}}'
              for n in range(1000)}  # fmt: skip
    await redis.hset(keys.BLOCKED_ACCOUNTS, mapping=others)  # about 250 kB in all
    clock = Clock()
    async with two_processes(settings, clock) as (one, _):
        assert one.scheduler is not None
        await one.scheduler.sync_users()
        clock.advance(1.0)
        sim.faults.forced = [{"status": 401, "account_id": "acc_2"}]
        sent = int((await redis.info("stats"))["total_net_output_bytes"])
        await read_user(one, "u_1")
        sent = int((await redis.info("stats"))["total_net_output_bytes"]) - sent
        backoff = await one.stores.polls.account_backoff("acc_2")
    assert backoff is not None and backoff.failures == 1
    assert sent < 20_000
