"""Every account a key reaches, as an operator sees it: `GET /admin/accounts` paged and
filtered by state, a discovered account's fields, its last read and lag, the console's
accounts page, and the accounts gauge by state (a fixed set of series).

Discovery's own writer is not used: the tests write the linked accounts it would have found
into Redis (`link`), as it does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.accounts_view import AccountsView
from service.app import Service
from service.bench.roundtrips import CountingConnection, counting_redis
from service.cursor import encode_cursor
from service.sim.lms import SimLMS
from service.store import keys
from service.store.linked_accounts import LinkedAccount
from service.store.polls import AccountBackoff
from service.store.stores import Stores
from tests.helpers import Clock, Driven, driven, make_settings
from tests.redis_server import RedisServer
from tests.test_console import TOKEN as CONSOLE_TOKEN
from tests.test_console import csrf_of

TOKEN = CONSOLE_TOKEN  # one token for the admin API and the console
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HOSTILE = "<script>alert('label')</script>"
DISCOVERY = {"enabled": True, "interval": "1h"}


async def link(redis: Redis, service: Service, *accounts: LinkedAccount) -> None:
    """What discovery writes when it finds linked accounts; every process sees them now."""
    await redis.hset(keys.LINKED_ACCOUNTS, mapping={a.id: a.encode() for a in accounts})
    await changed(redis, service)


async def changed(redis: Redis, service: Service) -> None:
    await redis.incr(keys.LINKED_VERSION)
    for stores in (service.stores, service.operations.stores):
        stores.accounts.forget_cache()


def linked(account_id: str, **fields: Any) -> LinkedAccount:
    return LinkedAccount(
        id=account_id,
        provider="docebo",
        provider_name="Docebo",
        origin_owner_id=f"cust_{account_id}",
        origin_owner_name=f"Customer {account_id}",
        **fields,
    )


@pytest.fixture
async def service(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> AsyncIterator[tuple[Driven, aiohttp.ClientSession]]:
    """acc_1 from the config (one user, polled per user an hour out), discovery on."""
    sim, lms_url = lms
    settings = make_settings(
        redis_server.url,
        lms_url,
        [],
        ["u_1"],
        http={"admin_token": TOKEN},
        polling={"interval": "1h", "account_interval": "10s"},
        account_discovery=DISCOVERY,
    )
    async with driven(settings, sim, http=True) as driver:
        assert driver.service.http_url is not None
        async with aiohttp.ClientSession(base_url=driver.service.http_url) as http:
            yield driver, http


async def get(http: aiohttp.ClientSession, path: str) -> tuple[int, Any]:
    async with http.get(path, headers=AUTH) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def every_state(redis: Redis, driver: Driven) -> None:
    """Eight accounts besides acc_1: four read (one backed off, one paused), one not
    active, one in error, one no LMS account, and one whose label is hostile."""
    service, now = driver.service, driver.clock()
    await link(
        redis,
        service,
        *(linked(f"acc_d{n}") for n in range(1, 5)),
        linked("acc_x", status="inactive", status_reasons=("token expired",)),
        linked("acc_e", status="error", status_reasons=("provider down",)),
        linked("acc_n"),
        linked("acc_h", label=HOSTILE),
    )
    await redis.zadd(keys.NOT_LMS_ACCOUNTS, {"acc_n": int((now + 86400) * 1000)})
    await changed(redis, service)
    backoff = AccountBackoff(now + 600, 3, "HTTP 401")
    await redis.hset(keys.BLOCKED_ACCOUNTS, "acc_d2", backoff.encode())
    await redis.zadd(keys.PAUSED_ACCOUNTS, {"acc_d3": int((now + 30) * 1000)})


ALL = ["acc_1", "acc_d1", "acc_d2", "acc_d3", "acc_d4", "acc_e", "acc_h", "acc_n", "acc_x"]


async def pages(http: aiohttp.ClientSession, query: str) -> list[list[str]]:
    """Every page's account ids, following next_cursor."""
    out, cursor = [], None
    while True:
        path = f"/admin/accounts?{query}" + (f"&cursor={cursor}" if cursor else "")
        status, page = await get(http, path)
        assert status == 200, page
        out.append([a["account_id"] for a in page["accounts"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def test_accounts_are_paged_and_filtered_by_state(
    service: tuple[Driven, aiohttp.ClientSession], redis: Redis
) -> None:
    driver, http = service
    await every_state(redis, driver)

    assert await pages(http, "limit=3") == [ALL[0:3], ALL[3:6], ALL[6:9]]
    assert await pages(http, "limit=4") == [ALL[0:4], ALL[4:8], ALL[8:9]]
    by_state = {
        "active": ["acc_1", "acc_d1", "acc_d4", "acc_h"],
        "backed_off": ["acc_d2"],
        "paused": ["acc_d3"],
        "not_lms": ["acc_n"],
        "inactive": ["acc_e", "acc_x"],
    }
    for state, ids in by_state.items():
        found = await pages(http, f"state={state}&limit=2")
        assert [a for page in found for a in page] == ids, state
    # without a limit: the first 100
    status, page = await get(http, "/admin/accounts")
    assert status == 200
    assert [a["account_id"] for a in page["accounts"]] == ALL and page["next_cursor"] is None
    items = {a["account_id"]: a for a in page["accounts"]}
    assert {a: i["state"] for a, i in items.items()} == {
        a: s for s, ids in by_state.items() for a in ids
    }

    # the config's account: as before, and its source
    config = items["acc_1"]
    assert config["source"] == "config" and config["strategy_in_force"] == "per_user"
    assert config["users_tracked"] == 1 and config["provider"] is None and config["owner"] is None
    assert config["status"] is None and config["status_reasons"] == []
    # an inactive linked account: shown, not read, with why
    inactive = items["acc_x"]
    assert inactive == {
        **inactive,
        "source": "discovery",
        "provider": "docebo",
        "provider_name": "Docebo",
        "owner": {"id": "cust_acc_x", "name": "Customer acc_x"},
        "status": "inactive",
        "status_reasons": ["token expired"],
        "strategy": "auto",
        "strategy_in_force": None,
        "users_tracked": 0,
        "last_read_ms": None,
        "lag_seconds": None,
        "last_error": None,
        "feed": None,
        "listing": None,
    }
    # a discovered account read with the defaults (users: all, auto), not read yet: due now
    read = items["acc_d1"]
    in_force = (read["strategy"], read["strategy_in_force"], read["users"])
    assert in_force == ("auto", "account", "all")
    assert read["status"] == "active" and read["last_read_ms"] is None
    assert items["acc_d2"]["last_error"] == "HTTP 401"
    assert items["acc_d2"]["backoff"]["failures"] == 3
    assert items["acc_d3"]["paused_until"] == pytest.approx(driver.clock() + 30, abs=0.01)
    assert items["acc_h"]["label"] == HOSTILE  # JSON carries it as it is; pages escape it


async def test_bad_limit_cursor_or_state_is_a_json_400(
    service: tuple[Driven, aiohttp.ClientSession],
) -> None:
    _, http = service
    for query in (
        "limit=0",
        "limit=501",
        "limit=x",
        "cursor=nope",
        f"cursor={encode_cursor('users', 'acc_1')}",  # another listing's
        "state=asleep",
        "state=ACTIVE",
    ):
        status, body = await get(http, f"/admin/accounts?{query}")
        assert status == 400 and body["error"], query
    async with http.get("/admin/accounts") as response:
        assert response.status == 401


async def test_a_discovered_account_shows_its_last_read_and_lag(
    service: tuple[Driven, aiohttp.ClientSession], redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    driver, http = service
    sim, _ = lms
    sim.put_assignment("acc_d1", "u_7", {"id": "a1"})
    await link(redis, driver.service, linked("acc_d1"))
    await driver.poll()  # its listing and its feed, due at once
    read_at_ms = int(driver.clock() * 1000)
    _, page = await get(http, "/admin/accounts?state=active")
    [_, found] = page["accounts"]
    assert found["account_id"] == "acc_d1" and found["strategy_in_force"] == "account"
    assert found["last_read_ms"] == read_at_ms and found["lag_seconds"] == 0
    assert found["users_tracked"] == 1 and found["last_error"] is None
    assert found["feed"]["next_read_at_ms"] == read_at_ms + 10_000

    # nothing reads it for 40 s: its feed, due 10 s after the read, is 30 s late
    driver.clock.advance(40)
    _, page = await get(http, "/admin/accounts?state=active")
    [_, found] = page["accounts"]
    assert found["lag_seconds"] == pytest.approx(30, abs=0.01)
    assert found["last_read_ms"] == read_at_ms


async def test_the_accounts_gauge_counts_by_state_and_source(
    service: tuple[Driven, aiohttp.ClientSession], redis: Redis
) -> None:
    driver, http = service
    await every_state(redis, driver)
    async with http.get("/metrics") as response:
        text = await response.text()
    series = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("lms_webhooks_accounts{")
    }
    expected = {
        ("active", "config"): 1,
        ("active", "discovery"): 3,
        ("backed_off", "discovery"): 1,
        ("paused", "discovery"): 1,
        ("not_lms", "discovery"): 1,
        ("inactive", "discovery"): 2,
    }
    # every (state, source) pair, however many accounts: ten series, none per account
    assert len(series) == 10
    for (state, source), count in expected.items():
        assert series[f'lms_webhooks_accounts{{source="{source}",state="{state}"}}'] == count
    assert sum(series.values()) == len(ALL)
    assert "acc_" not in "".join(line for line in text.splitlines() if "accounts" in line)


async def test_the_console_lists_accounts_by_state_page_by_page(
    service: tuple[Driven, aiohttp.ClientSession], redis: Redis
) -> None:
    driver, _ = service
    await every_state(redis, driver)
    # more than a page: 105 more inactive accounts
    await link(
        redis,
        driver.service,
        *(linked(f"acc_z{n:03}", status="inactive") for n in range(105)),
    )
    url = driver.service.http_url
    jar = aiohttp.CookieJar(unsafe=True)
    async with aiohttp.ClientSession(base_url=url, cookie_jar=jar) as http:
        async with http.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 303
        await csrf_of(http, "/ui/accounts")
        async with http.get("/ui/accounts?state=inactive") as r:
            page = await r.text()
        assert 'href="/ui/accounts"' in page  # the nav's link
        assert page.count("<tr data-account=") == 100
        assert 'data-account="acc_x"' in page and "token expired" in page
        assert 'data-account="acc_1"' not in page  # active: not on this page
        more = page.split('<a href="')[-1].split('" rel="next"')[0].replace("&amp;", "&")
        assert more.startswith("/ui/accounts?state=inactive&cursor=")
        async with http.get(more) as r:
            rest = await r.text()
        assert rest.count("<tr data-account=") == 7 and 'rel="next"' not in rest
        async with http.get("/ui/accounts?state=active") as r:
            active = await r.text()
        # the upstream's label is text, escaped
        assert HOSTILE not in active and "&lt;script&gt;alert(&#39;label&#39;)" in active
        assert "Customer acc_d1" in active and "Docebo" in active
        async with http.get("/ui/accounts?state=asleep") as r:
            assert r.status == 400 and "state" in await r.text()
        async with http.get("/ui") as r:
            overview = await r.text()
        assert 'href="/ui/accounts">More accounts</a>' in overview


def tracking_completions(*account_ids: str) -> list[dict[str, Any]]:
    return [
        {"account_id": a, "users": ["u_1"], "track": ["assignments", "completions"]}
        for a in account_ids
    ]


async def test_a_provider_without_completions_shows_them_unserved_until_asked_again(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    """acc_a's provider answers 404 on completions, acc_b's serves them: acc_a shows
    completions unserved for a day (the API and the console), acc_b shows none."""
    sim, lms_url = lms
    for account_id in ("acc_a", "acc_b"):
        sim.put_assignment(account_id, "u_1", {"id": "a1"})
    not_served = {"status": 404, "account_id": "acc_a", "path": "/completions"}
    sim.faults.forced.extend(dict(not_served) for _ in range(5))
    settings = make_settings(
        redis_server.url,
        lms_url,
        [],
        [],
        accounts=tracking_completions("acc_a", "acc_b"),
        http={"admin_token": TOKEN},
    )
    async with driven(settings, sim, http=True) as driver:
        await driver.baseline()
        assert [r.path for r in sim.requests if r.path.endswith("/completions")] == [
            "/unified/lms/users/u_1/completions"
        ] * 2  # each account asked once
        asked_ms = int(driver.clock() * 1000)
        assert driver.service.http_url is not None
        async with aiohttp.ClientSession(base_url=driver.service.http_url) as http:
            _, page = await get(http, "/admin/accounts")
            unserved = {a["account_id"]: a["unserved"] for a in page["accounts"]}
            day_ms = 86_400_000
            assert unserved == {
                "acc_a": [{"resource": "completions", "until_ms": asked_ms + day_ms}],
                "acc_b": [],
            }
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(
                base_url=driver.service.http_url, cookie_jar=jar
            ) as ui:
                async with ui.post("/ui/login", data={"token": TOKEN}) as r:
                    assert r.status == 200
                async with ui.get("/ui/accounts") as r:
                    rows = (await r.text()).split("<tr data-account=")[1:]
            [row_a, row_b] = rows
            assert row_a.startswith('"acc_a"') and row_b.startswith('"acc_b"')
            assert "completions not served, asked again" in " ".join(row_a.split())
            assert 'title="' in row_a.split("not served")[1]  # when, to the millisecond
            assert "not served" not in row_b
            # a day on, the mark has run out: completions are asked for again, none shown
            driver.clock.advance(day_ms / 1000)
            _, page = await get(http, "/admin/accounts")
            assert [a["unserved"] for a in page["accounts"]] == [[], []]


async def test_a_page_of_accounts_reads_unserved_resources_in_its_one_pipeline(
    redis_server: RedisServer, lms: tuple[SimLMS, str]
) -> None:
    """Ten accounts tracking completions cost the page the round trips one account tracking
    assignments only does: their unserved marks come in the page's pipeline."""
    _, lms_url = lms

    async def round_trips(accounts: list[dict[str, Any]]) -> int:
        settings = make_settings(redis_server.url, lms_url, [], [], accounts=accounts)
        redis = counting_redis(redis_server.url)
        clock = Clock()
        view = AccountsView(settings, Stores.on(redis, settings, clock), clock)
        try:
            await view.page()  # the connection, and what the directory caches
            before = CountingConnection.sent
            items, _ = await view.page()
            assert len(items) == len(accounts)
            return CountingConnection.sent - before
        finally:
            await redis.aclose()

    ten = tracking_completions(*(f"acc_{n}" for n in range(10)))
    one = [{"account_id": "acc_0", "users": ["u_1"]}]
    assert await round_trips(ten) == await round_trips(one)
