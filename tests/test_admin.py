"""The admin API over HTTP: auth, every route's happy path and its bad input."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis

from service.api.sign_in_limit import FAILURES_PER_CLIENT
from service.app import Service
from service.changes import events as ev
from service.cursor import encode_cursor
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver
from service.store import keys
from service.store.scripts import LEASED
from tests.helpers import (
    ACCOUNT,
    SECRET,
    Driven,
    as_json,
    driven,
    endpoint,
    make_settings,
    wait_until,
)
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "admin-token-9f8e7d"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def admin(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str]
) -> AsyncIterator[tuple[Driven, aiohttp.ClientSession, SimLMS, Receiver]]:
    """The admin API of a driven service (its users are spread over an hour: none is due
    until a test asks)."""
    sim, lms_url = lms
    rx, rx_url = receiver
    sim.put_assignment(ACCOUNT, "u_1", {"id": "a1"})
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        http={"admin_token": TOKEN},
        polling={"emit_on_first_sync": True, "interval": "1h"},
    )
    async with driven(settings, sim, http=True) as service:
        assert await service.poll() == 0  # the config's users are scheduled, none is due
        assert service.service.http_url is not None
        async with aiohttp.ClientSession(base_url=service.service.http_url) as http:
            yield service, http, sim, rx


async def call(
    http: aiohttp.ClientSession, method: str, path: str, auth: bool = True, **kwargs: Any
) -> tuple[int, Any]:
    headers = AUTH if auth else {}
    async with http.request(method, path, headers=headers, **kwargs) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


ROUTES = [
    ("GET", "/admin/endpoints"),
    ("POST", "/admin/endpoints/hr/enable"),
    ("GET", "/admin/dead-letters?endpoint=hr"),
    ("POST", "/admin/dead-letters/replay"),
    ("GET", "/admin/users"),
    ("POST", "/admin/users"),
    ("DELETE", "/admin/users/acc_1/u_9"),
    ("POST", "/admin/poll"),
    ("GET", "/admin/events"),
    ("GET", "/admin/events/evt_x"),
    ("POST", "/admin/endpoints/hr/test"),
    ("POST", "/admin/endpoints/hr/redeliver"),
]


async def test_every_route_needs_the_token(admin: Any) -> None:
    _, http, _, _ = admin
    for i, (method, path) in enumerate(ROUTES):
        status, body = await call(http, method, path, auth=False)
        assert status == 401 and body["error"] == "unauthorized", (method, path)
        async with http.request(method, path, headers={"Authorization": "Bearer nope"}) as r:
            # each wrong token is a guess: past the limit, not even compared
            assert r.status == (401 if i < FAILURES_PER_CLIENT else 429), (method, path)


async def test_endpoints_and_enable(admin: Any) -> None:
    driver, http, _, _ = admin
    service = driver.service
    status, body = await call(http, "GET", "/admin/endpoints")
    assert status == 200
    [hr] = body["endpoints"]
    assert hr["id"] == "hr" and hr["status"] == "active" and hr["queue_depth"] >= 0
    await service.endpoint_store.update("hr", lambda h: h.__class__(status="disabled"))
    status, body = await call(http, "POST", "/admin/endpoints/hr/enable")
    assert status == 200 and body["status"] == "active"
    assert (await service.endpoint_store.health("hr")).status == "active"
    status, body = await call(http, "POST", "/admin/endpoints/nope/enable")
    assert status == 404 and "nope" in body["error"]


DEAD_LETTER_FIELDS = {
    "event_id",
    "dead_at_ms",
    "event",
    "attempts",
    "last_error",
    "last_status",
    "last_attempt_at",
}


async def dead_letter(admin: Any) -> dict[str, Any]:
    """One event dead-lettered at hr (answered 500 three times); GET /admin/dead-letters."""
    driver, http, _, rx = admin
    rx.default_answer = Answer(status=500)
    assert await driver.service.operations.poll_now(ACCOUNT, "u_1")
    await driver.step()  # created: the first attempt
    await driver.step(0.25)  # and two retries, then dead
    await driver.step(0.25)
    assert await driver.service.queue.dead_count("hr") == 1
    status, body = await call(http, "GET", "/admin/dead-letters?endpoint=hr")
    assert status == 200
    return dict(body)


async def test_a_dead_letter_reads_the_same_in_the_api_the_cli_and_the_console(
    admin: Any, tmp_path: Path
) -> None:
    driver, http, _, _ = admin
    service = driver.service
    body = await dead_letter(admin)
    [letter] = body["dead_letters"]
    event_id = letter["event_id"]
    assert set(letter) == DEAD_LETTER_FIELDS and letter["event"]["id"] == event_id
    assert (letter["attempts"], letter["last_status"], letter["last_error"]) == (3, 500, "HTTP 500")
    assert letter["dead_at_ms"] == int(driver.clock() * 1000)
    # what another version wrote beside its attempts stays in Redis for its retries, unshown
    meta = keys.EndpointKeys("hr").meta
    stored = json.loads(await service.stores.redis.hget(meta, event_id))
    await service.stores.redis.hset(meta, event_id, json.dumps({**stored, "newer": 1}))
    assert await call(http, "GET", "/admin/dead-letters?endpoint=hr&limit=1000") == (200, body)
    # the CLI prints the same answer
    config = tmp_path / "config.yaml"
    config.write_text(
        f"redis_url: {service.settings.redis_url}\nstackone:\n  api_key: sk_test\n"
        f"endpoints:\n  - id: hr\n    url: https://hr.example.com/hooks\n"
        f"    secret: {SECRET}\n"
    )
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "dead-letters", "--config", str(config),
        "--endpoint", "hr", stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    printed, _ = await cli.communicate()
    assert cli.returncode == 0 and json.loads(printed) == body
    # the console's endpoint page lists the same dead letters, and the overview counts them
    async with aiohttp.ClientSession(
        base_url=service.http_url, cookie_jar=aiohttp.CookieJar(unsafe=True)
    ) as ui:
        async with ui.post("/ui/login", data={"token": TOKEN}) as r:
            overview = " ".join((await r.text()).split())
        assert '<a class="bad" href="/ui/endpoints/hr#dead">1</a>' in overview
        async with ui.get("/ui/endpoints/hr") as r:
            page = await r.text()
    assert page.count("<tr data-event=") == 1 and f'<tr data-event="{event_id}">' in page
    assert "HTTP 500" in page and '<td class="num">3</td>' in page


async def test_dead_letters_and_replay_keep_the_event_id(admin: Any) -> None:
    driver, http, _, rx = admin
    service = driver.service
    [letter] = (await dead_letter(admin))["dead_letters"]
    event_id = letter["event_id"]

    rx.default_answer = Answer(status=200)
    status, body = await call(
        http, "POST", "/admin/dead-letters/replay", json={"endpoint": "hr", "ids": [event_id]}
    )
    assert status == 200 and body["queued"] == 1
    await driver.deliver()
    assert [e.webhook_id for e in rx.events] == [event_id]
    assert await service.queue.dead_count("hr") == 0

    for path, expected in [
        ("/admin/dead-letters", 400),
        ("/admin/dead-letters?endpoint=nope", 404),
        ("/admin/dead-letters?endpoint=hr&limit=x", 400),
        ("/admin/dead-letters?endpoint=hr&limit=0", 400),
        ("/admin/dead-letters?endpoint=hr&limit=1001", 400),
    ]:
        status, body = await call(http, "GET", path)
        assert status == expected and "error" in body, path
    for payload, expected in [
        ({"endpoint": "nope"}, 404),
        ({"ids": ["x"]}, 400),
        ({"endpoint": "hr", "ids": "x"}, 400),
        ([1, 2], 400),
    ]:
        status, body = await call(http, "POST", "/admin/dead-letters/replay", json=payload)
        assert status == expected and "error" in body, payload
    status, body = await call(http, "POST", "/admin/dead-letters/replay", data=b"{not json")
    assert status == 400 and "JSON" in body["detail"]


async def test_users_added_and_removed_at_run_time(admin: Any) -> None:
    driver, http, sim, _ = admin
    sim.put_assignment(ACCOUNT, "u_new", {"id": "n1"})
    status, body = await call(
        http, "POST", "/admin/users", json={"account_id": ACCOUNT, "user_id": "u_new"}
    )
    assert status == 201 and body["added"] is True
    status, _ = await call(
        http, "POST", "/admin/users", json={"account_id": ACCOUNT, "user_id": "u_new"}
    )
    assert status == 200
    assert await driver.poll() == 1  # polled at once: the new user's baseline is taken
    assert [r.user_id for r in sim.requests] == ["u_new"]
    status, body = await call(http, "GET", "/admin/users")
    users = {(u["account_id"], u["user_id"]): u for u in body["users"]}
    assert users[(ACCOUNT, "u_1")]["source"] == "config"
    assert users[(ACCOUNT, "u_new")]["source"] == "runtime"

    status, body = await call(http, "DELETE", f"/admin/users/{ACCOUNT}/u_new")
    assert status == 200 and body["removed"] is True
    sim.clear_requests()
    await driver.service.operations.poll_now(ACCOUNT, "u_1")
    await driver.step(3600)  # an hour on: every tracked user is due
    assert {r.user_id for r in sim.requests} == {"u_1"}  # u_new is polled no more
    status, _ = await call(http, "DELETE", f"/admin/users/{ACCOUNT}/u_new")
    assert status == 404
    status, _ = await call(http, "DELETE", f"/admin/users/{ACCOUNT}/u_1")
    assert status == 409  # configured users are removed in the config file
    for payload in [{"account_id": ACCOUNT}, {"account_id": "", "user_id": "x"}, "x"]:
        status, body = await call(http, "POST", "/admin/users", json=payload)
        assert status == 400 and "error" in body


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # polled as /unified/lms/users/../assignments: the whole account's, sent as its own
        ({"account_id": ACCOUNT, "user_id": ".."}, 400),
        ({"account_id": ACCOUNT, "user_id": "."}, 400),
        ({"account_id": ACCOUNT, "user_id": "x" * 100_000}, 400),  # was tracked, 100 KB
        ({"account_id": "nope", "user_id": "u_2"}, 404),  # was polled as x-account-id: nope
    ],
)
async def test_users_no_poll_could_serve_are_refused(
    admin: Any, payload: dict[str, str], expected: int
) -> None:
    driver, http, sim, _ = admin
    status, body = await call(http, "POST", "/admin/users", json=payload)
    assert status == expected and set(body) == {"error", "detail"}, body
    assert len(json.dumps(body)) < 1000  # the id is not echoed back
    _, page = await call(http, "GET", "/admin/users")
    assert [(u["account_id"], u["user_id"]) for u in page["users"]] == [(ACCOUNT, "u_1")]
    assert await driver.poll() == 0 and sim.requests == []


async def test_the_longest_user_id_is_tracked(admin: Any) -> None:
    _, http, _, _ = admin
    status, body = await call(
        http, "POST", "/admin/users", json={"account_id": ACCOUNT, "user_id": "x" * 256}
    )
    assert status == 201 and body["added"] is True


async def test_poll_now(admin: Any) -> None:
    driver, http, sim, _ = admin
    assert await driver.poll() == 0 and sim.requests == []  # u_1's first poll: into the hour
    status, _ = await call(
        http, "POST", "/admin/poll", json={"account_id": ACCOUNT, "user_id": "u_1"}
    )
    assert status == 202
    assert await driver.poll() == 1 and len(sim.requests) == 1
    status, body = await call(
        http, "POST", "/admin/poll", json={"account_id": ACCOUNT, "user_id": "zz"}
    )
    assert status == 404 and body["error"] == "not tracked"
    status, _ = await call(http, "POST", "/admin/poll", json={"user_id": "u_1"})
    assert status == 400


async def test_poll_now_during_a_running_poll_follows_it_without_breaking_it(
    admin: Any, redis: Redis
) -> None:
    """A poll asked for while the user's poll runs neither breaks that poll's lease (its
    work would be dropped at its commit) nor overlaps it: it runs right after it."""
    driver, http, sim, rx = admin
    member = keys.user_member(ACCOUNT, "u_1")
    assert await driver.service.operations.poll_now(ACCOUNT, "u_1")
    assert await driver.poll() == 1  # the baseline (it emits: a1's created)
    sim.progress(ACCOUNT, "u_1", "a1", 50)
    sim.clear_requests()
    sim.faults.delay_seconds = 0.3  # the first poll is under way when poll now comes

    async def leased() -> bool:  # scored as a lease, no longer as a due time
        return (await redis.zscore(keys.POLL_DUE, member) or 0) >= LEASED

    assert await driver.service.operations.poll_now(ACCOUNT, "u_1")
    polling = asyncio.create_task(driver.poll())
    await wait_until(leased, 5, "u_1's poll under way")
    token = await redis.zscore(keys.POLL_DUE, member)
    status, _ = await call(
        http, "POST", "/admin/poll", json={"account_id": ACCOUNT, "user_id": "u_1"}
    )
    assert status == 202
    assert await redis.zscore(keys.POLL_DUE, member) == token  # the running poll's lease holds
    assert await polling == 2  # the running poll, then the one asked for, at once
    sim.faults.delay_seconds = 0.0
    await driver.deliver()
    assert len(sim.requests) == 2
    # both polls committed: the running one's work was not dropped as a lost lease's
    metrics = driver.service.metrics.render().decode()
    assert 'lms_webhooks_poll_duration_seconds_count{outcome="ok"} 3.0' in metrics
    assert 'outcome="stale"' not in metrics
    assert sorted(e.type for e in rx.events)[-3:] == [
        ev.PROGRESS_CHANGED,
        ev.STATUS_CHANGED,
        ev.UPDATED,
    ]
    assert len(rx.events) == len({e.webhook_id for e in rx.events}) == 4
    # and the cadence goes on from the poll asked for: due an interval (1 h) later
    assert await redis.zscore(keys.POLL_DUE, member) == int((driver.clock.now + 3600) * 1000)


async def test_openapi_describes_every_admin_route(admin: Any) -> None:
    _, http, _, _ = admin
    status, document = await call(http, "GET", "/openapi.json", auth=False)
    assert status == 200 and document["openapi"].startswith("3.")
    for method, path in ROUTES:
        template = path.split("?")[0].replace("/hr/", "/{endpoint_id}/")
        template = template.replace("/acc_1/u_9", "/{account_id}/{user_id}")
        template = template.replace("/evt_x", "/{event_id}")
        assert method.lower() in document["paths"][template], (method, template)


async def test_the_delivery_log_over_http(admin: Any) -> None:
    driver, http, _, rx = admin
    service = driver.service
    assert await service.operations.poll_now(ACCOUNT, "u_1")
    await driver.step()  # a1 created and delivered
    status, page = await call(http, "GET", "/admin/events?user_id=u_1&endpoint=hr")
    assert status == 200 and page["next_cursor"] is None
    [summary] = page["items"]
    assert summary["endpoints"] == {"hr": {"outcome": "delivered", "attempts": 1}}
    at = summary["logged_at_ms"]
    iso = datetime.fromtimestamp(at / 1000, UTC).isoformat().replace("+00:00", "Z")
    for query in (f"since={iso}", f"until={at}", f"since={at}&until={at}&outcome=delivered"):
        status, page = await call(http, "GET", f"/admin/events?{query}")
        assert status == 200 and [e["id"] for e in page["items"]] == [summary["id"]], query
    status, page = await call(http, "GET", f"/admin/events?since={at + 1}")
    assert status == 200 and page["items"] == []
    # a form's empty fields are no filter
    status, page = await call(http, "GET", "/admin/events?endpoint=&type=&user_id=&limit=")
    assert status == 200 and len(page["items"]) == 1

    status, event = await call(http, "GET", f"/admin/events/{summary['id']}")
    assert status == 200 and event["body"] == rx.events[0].body
    assert [a["status"] for a in event["attempts"]["hr"]] == [200]

    status, sent = await call(http, "POST", "/admin/endpoints/hr/test")
    assert status == 200 and sent["delivered"] is True and sent["status"] == 200
    assert rx.events[-1].webhook_id == sent["event_id"] and rx.events[-1].type == "webhook.test"

    status, body = await call(
        http, "POST", "/admin/endpoints/hr/redeliver", json={"since": iso, "outcome": "any"}
    )
    assert status == 200 and body == {"endpoint": "hr", "queued": 1}  # not the test send
    await driver.deliver()
    assert [e.webhook_id for e in rx.events].count(summary["id"]) == 2


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/admin/events/evt_nope", None, 404),
        ("GET", "/admin/events?endpoint=nope", None, 404),
        ("POST", "/admin/endpoints/nope/test", None, 404),
        ("POST", "/admin/endpoints/nope/redeliver", {"since": 0, "outcome": "any"}, 404),
        ("GET", "/admin/events?since=2000&until=1000", None, 400),
        ("GET", "/admin/events?since=2026-11-29T00:00:00Z&until=2026-11-28T00:00:00Z", None, 400),
        ("GET", "/admin/events?since=yesterday", None, 400),
        ("GET", "/admin/events?until=99999999999999999999", None, 400),
        ("GET", "/admin/events?limit=0", None, 400),
        ("GET", "/admin/events?limit=1000000000", None, 400),
        ("GET", "/admin/events?limit=501", None, 400),
        ("GET", "/admin/events?limit=-1", None, 400),
        ("GET", "/admin/events?limit=1.5", None, 400),
        ("GET", "/admin/events?limit=1_0", None, 400),
        ("GET", "/admin/events?outcome=lost", None, 400),
        ("GET", "/admin/events?cursor=x", None, 400),
        ("GET", "/admin/events?cursor=c1.!!!", None, 400),
        ("GET", "/admin/events?cursor=c1.WyJsb2ciLCJhIiwiYiJd", None, 400),  # ["log","a","b"]
        ("GET", "/admin/events?cursor=c1.WyJ1c2VycyIsImFjYzoxIl0", None, 400),  # a users'
        ("GET", "/admin/events?cursor=c1." + "A" * 5000, None, 400),
        ("GET", "/admin/users?cursor=c1.WyJsb2ciLDEsImIiXQ", None, 400),  # ["log",1,"b"]
        # a forged time far out of range: OverflowError, a 500
        ("GET", "/admin/events?cursor=" + encode_cursor("log", 10**400, "x"), None, 400),
        ("GET", "/admin/events?cursor=" + encode_cursor("log", -(10**400), "x"), None, 400),
        ("GET", "/admin/events?cursor=" + encode_cursor("log", 2**53 + 1, "x"), None, 400),
        ("GET", "/admin/users?limit=0", None, 400),
        ("GET", "/admin/endpoints?limit=1000000000", None, 400),
        ("GET", "/admin/endpoints?cursor=c1.WyJlbmRwb2ludHMiLCJnb25lIl0", None, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"outcome": "any"}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": 0}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": 0, "outcome": "queued"}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": True, "outcome": "any"}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": 1.5, "outcome": "any"}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": 10**30, "outcome": "any"}, 400),
        ("POST", "/admin/endpoints/hr/redeliver", {"since": 2, "until": 1, "outcome": "any"}, 400),
        (
            "POST",
            "/admin/endpoints/hr/redeliver",
            {"since": "2026-11-29T00:00:00+01:00", "until": "2026-11-28", "outcome": "dead"},
            400,
        ),
        ("POST", "/admin/endpoints/hr/redeliver", [1], 400),
    ],
)
async def test_bad_input_to_the_log_routes_is_4xx_json(
    admin: Any, method: str, path: str, body: Any, expected: int
) -> None:
    _, http, _, _ = admin
    kwargs = {} if body is None else {"json": body}
    status, answer = await call(http, method, path, **kwargs)
    assert status == expected and "error" in answer, answer


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/admin/dead-letters/replay", {"ids": ["x"]}, "endpoint"),
        ("/admin/dead-letters/replay", {"endpoint": "hr", "ids": "x"}, "ids"),
        ("/admin/dead-letters/replay", {"endpoint": "hr", "ids": ["a", ""]}, "ids[1]"),
        ("/admin/dead-letters/replay", {"endpoint": 7}, "endpoint"),
        ("/admin/users", {"account_id": "", "user_id": "u_2"}, "account_id"),
        ("/admin/users", {"account_id": ACCOUNT, "user_id": ".."}, "user_id"),
        ("/admin/poll", {"account_id": ACCOUNT}, "user_id"),
        ("/admin/endpoints/hr/redeliver", {"outcome": "any"}, "since"),
        ("/admin/endpoints/hr/redeliver", {"since": True, "outcome": "any"}, "since"),
        ("/admin/endpoints/hr/redeliver", {"since": "0", "outcome": "queued"}, "outcome"),
        ("/admin/endpoints/hr/redeliver", {"since": 0, "until": "soon", "outcome": "any"}, "until"),
    ],
)
async def test_a_bad_body_is_400_naming_its_field(
    admin: Any, path: str, body: dict[str, Any], field: str
) -> None:
    _, http, _, _ = admin
    status, answer = await call(http, "POST", path, json=body)
    assert status == 400 and answer["error"] == "bad request", answer
    assert answer["detail"].startswith(f"`{field}`"), answer


async def test_a_body_may_name_more_than_a_route_reads(admin: Any) -> None:
    """Fields a route does not read are ignored, as they always were."""
    _, http, _, _ = admin
    body = {"account_id": ACCOUNT, "user_id": "u_1", "note": "from the runbook"}
    status, _ = await call(http, "POST", "/admin/poll", json=body)
    assert status == 202
    body = {"endpoint": "hr", "ids": [], "dry_run": True}  # no ids: all its dead letters
    status, answer = await call(http, "POST", "/admin/dead-letters/replay", json=body)
    assert (status, answer) == (200, {"endpoint": "hr", "queued": 0})
    body = {"since": "1970-01-01T00:00:00", "until": "", "outcome": "any", "x": 1}
    status, answer = await call(http, "POST", "/admin/endpoints/hr/redeliver", json=body)
    assert (status, answer) == (200, {"endpoint": "hr", "queued": 0})


async def test_users_and_endpoints_come_in_pages(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    hooks = [endpoint("http://127.0.0.1:9", f"ep{n}") for n in range(5)]
    settings = make_settings(redis_server.url, lms[1], hooks, ["u_1", "u_2"])
    async with driven(settings) as driver:
        ops = driver.service.operations
        for n in range(7):
            await ops.add_user(ACCOUNT, f"u_run{n}")
        users: list[str] = []
        endpoints: list[str] = []
        cursor = None
        while True:
            page = as_json(await ops.users(limit=2, cursor=cursor))
            assert len(page["users"]) <= 2 and "backed_off_accounts" in page
            users += [u["user_id"] for u in page["users"]]
            if (cursor := page["next_cursor"]) is None:
                break
        while True:
            page = as_json(await ops.endpoints(limit=2, cursor=cursor))
            endpoints += [e["id"] for e in page["endpoints"]]
            if (cursor := page["next_cursor"]) is None:
                break
    assert users == sorted(["u_1", "u_2", *(f"u_run{n}" for n in range(7))])
    assert endpoints == [f"ep{n}" for n in range(5)]


async def test_admin_api_is_off_without_a_token(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    settings = make_settings(redis_server.url, lms[1], [], ["u_1"])
    service = Service(settings)
    await service.start()
    try:
        async with aiohttp.ClientSession(base_url=service.http_url) as http:
            status, body = await call(http, "GET", "/admin/endpoints")
            assert status == 404 and "error" in body
            _, document = await call(http, "GET", "/openapi.json")
            assert not [p for p in document["paths"] if p.startswith("/admin")]
    finally:
        await service.stop(timeout=2.0)


# ------------------------------------------------ hostile input: 4xx JSON, never a 5xx


async def raw_request(base_url: str, head: bytes, body: bytes = b"") -> tuple[int, str, bytes]:
    """Bytes on the wire, as no HTTP client would send them: (status, content type, body)."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    header, _, content = answer.partition(b"\r\n\r\n")
    lines = header.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), fields.get("Content-Type", ""), content


async def test_non_ascii_authorization_is_401_json(admin: Any) -> None:
    driver, _, _, _ = admin
    for token in (b"Bearer \xff\xfe", "Bearer é".encode(), b"Bearer " + TOKEN.encode() + b"\x80"):
        head = b"GET /admin/endpoints HTTP/1.1\r\nHost: x\r\nAuthorization: " + token + b"\r\n"
        status, kind, body = await raw_request(driver.service.http_url, head)
        assert (status, kind) == (401, "application/json; charset=utf-8"), body
        assert json.loads(body)["error"] == "unauthorized"


LONE = '"bad\\ud800x"'  # a JSON escape Python reads as a lone surrogate: not encodable


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/users", f'{{"account_id": "acc_1", "user_id": {LONE}}}'),
        ("/admin/users", f'{{"account_id": {LONE}, "user_id": "u_2"}}'),
        ("/admin/poll", f'{{"account_id": "acc_1", "user_id": {LONE}}}'),
        ("/admin/dead-letters/replay", f'{{"endpoint": "hr", "ids": [{LONE}]}}'),
        ("/admin/dead-letters/replay", f'{{"endpoint": {LONE}}}'),
        ("/admin/users", "[" * 100_000 + "]" * 100_000),  # RecursionError in json.loads
        ("/admin/poll", '{"a": ' * 50_000 + "1" + "}" * 50_000),
        # past Python's 4300 digits of an int read from a string: a ValueError in json.loads
        ("/admin/users", '{"account_id": "acc_1", "user_id": ' + "1" * 5000 + "}"),
        ("/admin/endpoints/hr/redeliver", '{"since": ' + "9" * 4301 + "}"),
    ],
)
async def test_unusable_bodies_are_400_json(admin: Any, path: str, body: str) -> None:
    _, http, _, _ = admin
    headers = {**AUTH, "Content-Type": "application/json"}
    async with http.post(path, data=body.encode(), headers=headers) as response:
        assert response.content_type == "application/json", await response.text()
        assert response.status == 400 and (await response.json())["error"] == "bad request"


@pytest.mark.parametrize(
    "path",
    [
        "/admin/users/acc_1/%ED%A0%80",  # the UTF-8 form of a surrogate
        "/admin/users/%FF/u_1",
        "/admin/endpoints/%ED%A0%80/enable",
        "/admin/dead-letters?endpoint=%ED%A0%80",
    ],
)
async def test_undecodable_path_and_query_are_4xx_json(admin: Any, path: str) -> None:
    driver, _, _, _ = admin
    method = {"users": "DELETE", "endpoints": "POST"}.get(path.split("/")[2], "GET")
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n".encode()
    status, kind, body = await raw_request(driver.service.http_url, head)
    assert 400 <= status < 500 and kind.startswith("application/json"), (status, body)


@pytest.mark.parametrize("size", [9 * 1024, 15 * 1024])
async def test_large_headers_get_json_answers(admin: Any, size: int) -> None:
    """aiohttp answers a header over 8 KiB with a plain-text 400 before any handler runs;
    the service reads headers up to 16 KiB, so such a request gets the API's own answer."""
    _, http, _, _ = admin
    async with http.get(
        "/admin/endpoints", headers={"Authorization": "Bearer " + "x" * size}
    ) as response:
        assert response.status == 401 and response.content_type == "application/json"
    async with http.get("/healthz", headers={**AUTH, "X-Padding": "y" * size}) as response:
        assert response.status == 200


async def test_headers_beyond_the_limit_are_still_refused(admin: Any) -> None:
    """What does not hold: past 16 KiB aiohttp's parser answers (400, plain text)."""
    _, http, _, _ = admin
    async with http.get("/healthz", headers={"X-Padding": "y" * 17 * 1024}) as response:
        assert response.status == 400
