"""The StackOne client against the simulator over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiohttp
import orjson
import pytest
import structlog
from aiohttp import web
from pydantic import ValidationError
from redis.asyncio import Redis

from service import jsonfmt
from service.config import StackOneSettings
from service.errors import UpstreamMalformed, UpstreamRejected, UpstreamUnavailable
from service.metrics import Metrics
from service.sim.gate import SimResponse
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from service.store.limits import SharedLimiter, api_key_rate
from service.upstream import client as client_module
from service.upstream import model as model_module
from service.upstream.client import StackOneClient
from service.upstream.model import Assignment, Page, parse_page, parse_user_page, plainly_valid
from tests.helpers import API_KEY, endpoint, make_settings, running, served, wait_until
from tests.redis_server import RedisServer

USER = "user/with spaces"  # ids are URL-encoded on the way out
ACCOUNT = "acc 1"


async def no_sleep(_: float) -> None:
    return None


@pytest.fixture
async def client(
    redis: Redis, lms: tuple[SimLMS, str]
) -> AsyncIterator[tuple[StackOneClient, SimLMS]]:
    sim, url = lms
    for n in range(5):
        sim.put_assignment(ACCOUNT, USER, {"id": f"a{n}"})
    settings = StackOneSettings(base_url=url, api_key=API_KEY, page_size=2)  # type: ignore[arg-type]
    rate = SharedLimiter(redis).rate(api_key_rate(settings.max_requests_per_minute))
    async with aiohttp.ClientSession() as session:
        yield StackOneClient(session, settings, rate, Metrics(), sleep=no_sleep), sim


async def read_all(client: StackOneClient, since: datetime | None = None) -> list[Page]:
    return [page async for page in client.pages(ACCOUNT, USER, since)]


async def test_pages_follow_next_with_auth_and_account(
    client: tuple[StackOneClient, SimLMS],
) -> None:
    stackone, sim = client
    sim.faults.max_page_records = 1  # short pages that still carry a next are not the end
    pages = await read_all(stackone)
    assert [r["id"] for p in pages for r in p.records] == [f"a{n}" for n in range(5)]
    assert pages[-1].next is None
    first = sim.requests[0]
    assert first.auth_ok and first.account_id == ACCOUNT
    assert first.user_id == USER and first.query["page_size"] == "2"
    assert all(r.query.get("next") for r in sim.requests[1:])
    assert base64.b64encode(f"{API_KEY}:".encode()).decode() in stackone._auth


@pytest.mark.parametrize(
    ("style", "param"), [("deep_object", "filter[updated_after]"), ("form", "updated_after")]
)
async def test_updated_after_filter_styles(
    client: tuple[StackOneClient, SimLMS], style: str, param: str
) -> None:
    stackone, sim = client
    stackone.settings = stackone.settings.model_copy(update={"filter_style": style})
    since = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await read_all(stackone, since)
    assert sim.requests[0].query[param] == "2026-01-02T03:04:05.678Z"


async def test_server_errors_are_retried(client: tuple[StackOneClient, SimLMS]) -> None:
    stackone, sim = client
    sim.faults.forced.extend([{"status": 500}, {"status": 502}])
    pages = await read_all(stackone)
    assert sum(len(p.records) for p in pages) == 5
    assert [r.status for r in sim.requests][:3] == [500, 502, 200]
    sim.faults.forced.extend([{"status": 503}] * 4)
    with pytest.raises(UpstreamUnavailable) as caught:
        await read_all(stackone)
    assert caught.value.status == 503


@pytest.mark.parametrize("status", [401, 403, 404, 412])
async def test_rejections_are_not_retried(
    client: tuple[StackOneClient, SimLMS], status: int
) -> None:
    stackone, sim = client
    sim.faults.forced.append({"status": status})
    with pytest.raises(UpstreamRejected) as caught:
        await read_all(stackone)
    assert caught.value.status == status and len(sim.requests) == 1


@pytest.mark.parametrize("fault", [{"malformed_json": True}, {"wrong_shape": True}, "runaway_next"])
async def test_malformed_answers_fail_the_read(
    client: tuple[StackOneClient, SimLMS], fault: object
) -> None:
    stackone, sim = client
    if fault == "runaway_next":
        sim.faults.runaway_next = True
        stackone.settings = stackone.settings.model_copy(update={"max_pages": 20})
    else:
        sim.faults.forced.append(fault)  # type: ignore[arg-type]
    with pytest.raises(UpstreamMalformed):
        await read_all(stackone)


async def test_record_without_id_is_skipped(client: tuple[StackOneClient, SimLMS]) -> None:
    stackone, sim = client
    sim.faults.forced.append({"missing_id": True})
    pages = await read_all(stackone)
    assert pages[0].skipped == {"missing_id": 1}
    assert sum(len(p.records) for p in pages) == 4


ODD_RECORDS = [
    {"id": "a"},
    {"id": "a", "progress": 5},
    {"id": "a", "progress": 5.5},
    {"id": "a", "progress": "50"},  # a numeric string: pydantic decides (accepts)
    {"id": "a", "progress": True},
    {"id": "a", "progress": [5]},
    {"id": "a", "status": {"value": "x", "source_value": [1, {"deep": None}]}},
    {"id": "a", "status": {"value": 1}},
    {"id": "a", "status": "completed"},
    {"id": "a", "status": None, "result": {"value": None}},
    {"id": "a", "unified_custom_fields": {"k": [1, 2]}},
    {"id": "a", "unified_custom_fields": []},
    {"id": "a", "due_date": 5},
    {"id": "a", "brand_new_field": {"any": "thing"}},
    {"id": "a", "progress": 10**400},  # read by `json` (orjson would not): pydantic decides
    {"id": "a", "external_reference": "\ud800"},  # a lone surrogate
    {"id": "a", "\ud800": 1},
    {"id": "a", "unified_custom_fields": {"big": 2**70, "n": 12345678901234567890123}},
]


@pytest.mark.parametrize("record", ODD_RECORDS)
def test_fast_record_check_agrees_with_the_model(record: dict[str, Any]) -> None:
    """The fast path only ever accepts what pydantic accepts, parse_page's verdict is
    pydantic's own for every record here, and a record passes through exactly as received.
    (What pydantic would accept but cannot be stored exactly is refused before it: below.)"""
    try:
        Assignment.model_validate(record)
        valid = True
    except ValidationError:
        valid = False
    _, plain = jsonfmt.loads_exact(json.dumps(record))
    if plain and plainly_valid(record):  # the fast check is trusted only with orjson's types
        assert valid
    page = parse_page(json.dumps({"data": [record], "next": None}).encode())
    assert (page.records == [record]) is valid
    assert page.skipped == ({} if valid else {"invalid_record": 1})


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, 123456789012345678901234567890, "\ud800", 1.5, "Sécurité 🔒"],
)
def test_json_values_come_back_exactly(value: object) -> None:
    """orjson would turn integers beyond 64 bits into floats and refuses lone surrogates: the
    hot-path JSON gives exactly what `json` gives, both ways."""
    raw = json.dumps({"v": value})
    assert jsonfmt.loads(raw.encode()) == {"v": value}
    assert json.loads(jsonfmt.dumps_bytes({"v": value})) == {"v": value}


async def test_a_permit_handed_in_is_taken_by_the_next_request_while_fresh(
    redis: Redis, lms: tuple[SimLMS, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll gets its first request's permit with the user's state: the client spends it
    instead of asking Redis; one left unused for a second is not spent later."""
    sim, url = lms
    sim.put_assignment(ACCOUNT, USER, {"id": "a0"})
    settings = StackOneSettings(base_url=url, api_key=API_KEY, max_requests_per_minute=600)  # type: ignore[arg-type]
    budget = api_key_rate(600)  # 10 back to back, then about 10/s
    rate = CountedAsks(SharedLimiter(redis).rate(budget))
    metrics = Metrics()
    waited = metrics.throttle_wait.labels("upstream")
    async with aiohttp.ClientSession() as session:
        stackone = StackOneClient(session, settings, rate, metrics)  # type: ignore[arg-type]
        while await rate.try_acquire() == 0:  # the budget spent
            pass
        asked = rate.asks
        stackone.keep_permit()
        await read_all(stackone)
        assert rate.asks == asked and waited._value.get() == 0  # the kept permit: Redis unasked
        stackone.keep_permit()
        monkeypatch.setattr(client_module, "KEPT_PERMIT_SECONDS", -1.0)  # now stale
        await read_all(stackone)
        # it asked the budget again (whether it then waited depends on how long the first
        # read took: the key's rate refills meanwhile)
        assert rate.asks > asked


class CountedAsks:
    """The shared budget, each ask for a permit counted."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.asks = 0

    async def try_acquire(self, yielding: bool = False) -> float:
        self.asks += 1
        return float(await self.real.try_acquire(yielding))

    async def pause(self, seconds: float) -> None:
        await self.real.pause(seconds)


class RecordedPauses:
    """The shared budget, with every key-wide pause recorded instead of applied."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.paused: list[float] = []

    async def try_acquire(self, yielding: bool = False) -> float:
        return float(await self.real.try_acquire(yielding))

    async def pause(self, seconds: float) -> None:
        self.paused.append(seconds)


@pytest.mark.parametrize("header", ["nan", "inf", "1e999", "1_0", "soon", "", "7"])
async def test_retry_after_unreadable_is_the_default_pause(
    client: tuple[StackOneClient, SimLMS], header: str
) -> None:
    """`Retry-After: nan` crashed the poll and left the key unpaused: an unreadable value
    reads as absent, so the default pause applies, and the read goes on."""
    stackone, sim = client
    stackone.rate = rate = RecordedPauses(stackone.rate)
    sim.faults.forced.append({"status": 429, "retry_after": header})
    pages = await read_all(stackone)
    assert sum(len(p.records) for p in pages) == 5
    assert rate.paused == [7.0 if header == "7" else client_module.DEFAULT_RETRY_AFTER]


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.mark.parametrize("depth", [1100, 100_000])
def test_page_nested_beyond_what_json_reads_is_malformed(depth: int) -> None:
    """orjson refuses past 1024 levels and `json` then raised RecursionError: the poll
    crashed (poll_crashed) instead of failing as a malformed page."""
    for body in (nested(depth), f'{{"data": {nested(depth)}, "next": null}}'):
        with pytest.raises(UpstreamMalformed):
            parse_page(body.encode())
    record = f'{{"data": [{{"id": "a", "x": {nested(depth)}}}], "next": null}}'
    with pytest.raises(UpstreamMalformed):
        parse_page(record.encode())


@pytest.mark.parametrize("depth", [300, 1020])
def test_record_too_deep_to_write_again_is_skipped(depth: int) -> None:
    """orjson reads 1024 levels but writes 254, and `json` about 1000: a record read but not
    writable failed every poll of its user when its snapshot was stored."""
    good = {"id": "b", "x": json.loads(nested(200))}
    raw = f'{{"data": [{{"id": "a", "x": {nested(depth)}}}, {json.dumps(good)}], "next": null}}'
    page = parse_page(raw.encode())
    assert page.records == [good] and page.skipped == {"invalid_record": 1}
    jsonfmt.dumps_bytes(page.records)


@pytest.mark.parametrize(
    "record",
    [
        '{"id": "a", "progress": NaN}',
        '{"id": "a", "progress": Infinity}',
        '{"id": "a", "progress": -Infinity}',
        '{"id": "a", "progress": 1e400}',
        '{"id": "a", "unified_custom_fields": {"k": [1, NaN]}}',
        '{"id": "a", "anything_new": {"deep": Infinity}}',
        '{"id": "bad\\ud800x"}',  # a lone surrogate in the id: no event id can be made of it
        '{"id": "\\udfff"}',
    ],
)
def test_non_finite_numbers_and_unencodable_ids_make_a_record_invalid(record: str) -> None:
    """NaN and Infinity were stored as null, so every poll saw a change and sent events;
    an id with a lone surrogate raised UnicodeEncodeError in event_id on every poll."""
    page = parse_page(f'{{"data": [{record}, {{"id": "ok"}}], "next": null}}'.encode())
    assert page.records == [{"id": "ok"}] and page.skipped == {"invalid_record": 1}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def upstream(
    redis: Redis, handler: Handler, **settings: Any
) -> AsyncIterator[StackOneClient]:
    """A client of an upstream that answers every listing with `handler`."""
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = StackOneSettings(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY, **settings)  # type: ignore[arg-type]
    rate = SharedLimiter(redis).rate(api_key_rate(config.max_requests_per_minute))
    try:
        async with aiohttp.ClientSession() as session:
            yield StackOneClient(session, config, rate, Metrics(), attempts=2, sleep=no_sleep)
    finally:
        await runner.cleanup()


def listing(records: list[dict[str, Any]], cursor: str | None) -> web.Response:
    return web.Response(body=orjson.dumps({"data": records, "next": cursor}))


@pytest.mark.parametrize("length", [4097, 1_000_000])
async def test_a_cursor_longer_than_4_kib_fails_the_read(redis: Redis, length: int) -> None:
    """1 MB cursors were followed (and each kept: 400 pages grew the process by 400 MB); one
    longer than 4 KiB (MAX_CURSOR_CHARS) is malformed, and is not followed; one of 4 KiB is."""
    asked: list[str | None] = []

    async def answer(request: web.Request) -> web.Response:
        asked.append(request.query.get("next"))
        if request.query.get("next") == "fits":
            return listing([{"id": "b"}], "y" * 4096)
        return listing([{"id": "a"}], "x" * length if asked[1:] else "fits")

    async with upstream(redis, answer) as stackone:
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(UpstreamMalformed, match=f"cursor of {length} characters"):
                await read_all(stackone)
    assert len(asked) == 3  # "fits", then the 4 KiB one were followed; the longer one not
    assert "x" * 100 not in repr(logs)  # never the cursor


async def test_a_looping_cursor_chain_fails_the_read(redis: Redis) -> None:
    """Cursors are remembered by digest: a chain that comes back to one ends the read."""
    cursors = ["c0", "c1", "c2", "c1"]

    async def answer(request: web.Request) -> web.Response:
        at = request.query.get("next")
        return listing([{"id": "a"}], cursors[0 if at is None else cursors.index(at) + 1])

    async with upstream(redis, answer) as stackone:
        with pytest.raises(UpstreamMalformed, match="repeats"):
            await read_all(stackone)


async def test_a_long_read_says_how_far_it_got(
    client: tuple[StackOneClient, SimLMS], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An endless `next` chain ran 876 requests in 46 s without a log line: a long read says
    so every LONG_READ_PAGES pages (not each page, never a cursor), and the page bound it
    ran into names its config key."""
    stackone, sim = client
    sim.faults.runaway_next = True
    stackone.settings = stackone.settings.model_copy(update={"max_pages": 10})
    monkeypatch.setattr(client_module, "LONG_READ_PAGES", 3)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(UpstreamMalformed, match=r"more than 10 pages \(stackone.max_pages\)"):
            await read_all(stackone)
    said = [e for e in logs if e["event"] == "upstream_long_read"]
    # the 5 records are on the first 3 pages; the runaway chain goes on with empty ones
    assert [(e["pages"], e["records"]) for e in said] == [(3, 5), (6, 5), (9, 5)]
    assert all(e["account_id"] == ACCOUNT and e["log_level"] == "info" for e in said)
    cursors = [r.query["next"] for r in sim.requests[1:]]
    assert not any(c in repr(logs) for c in cursors) and API_KEY not in repr(logs)


def test_the_default_account_page_bound_is_ten_minutes_of_a_key() -> None:
    """An endless account listing ran for 100,000 pages (100 minutes of a 1000/min key)."""
    settings = StackOneSettings(api_key=API_KEY)  # type: ignore[arg-type]
    assert settings.max_account_pages * 60 / settings.max_requests_per_minute <= 600


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ([{"id": f"a{n}"} for n in range(100_000)], "a page of 100000 records where page_size 2"),
        ([{"id": f"a{n}", "x": "y" * 2**20} for n in range(3)], "a page larger than"),
    ],
)
async def test_a_page_far_beyond_page_size_fails_before_its_records_are_checked(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, records: list[dict[str, Any]], error: str
) -> None:
    """A page of 100,000 records where 100 were asked held the event loop for almost a second
    (each record validated): it is malformed, refused before any record is looked at, and so
    is a body far larger than page_size records take. Up to twice page_size (+10) is read."""
    checked: list[object] = []
    real = model_module._unusable
    monkeypatch.setattr(
        model_module, "_unusable", lambda *args: checked.append(args) or real(*args)
    )
    body = orjson.dumps({"data": records, "next": None})

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body)

    async with upstream(redis, answer, page_size=2) as stackone:
        with pytest.raises(UpstreamMalformed, match=error):
            await read_all(stackone)
        assert checked == []
        most = model_module.max_page_records(2)
        body = orjson.dumps({"data": [{"id": f"a{n}"} for n in range(most)], "next": None})
        assert len((await read_all(stackone))[0].records) == most


def test_a_user_listing_far_beyond_page_size_is_malformed() -> None:
    users = [{"id": f"u{n}"} for n in range(model_module.max_page_records(5) + 1)]
    with pytest.raises(UpstreamMalformed, match="page_size 5"):
        parse_user_page(orjson.dumps({"data": users, "next": None}), 5)


async def test_a_dripping_upstream_times_out_each_attempt_and_says_so(redis: Redis) -> None:
    """An upstream that answers a byte every so often was silent until every attempt had run
    out (4 minutes at the defaults): each attempt ends at request_timeout, body included, and
    each one retried logs `upstream_retry`."""
    stop = asyncio.Event()

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b'{"data": [')
        while not stop.is_set():  # far longer than the timeout
            await asyncio.sleep(0.1)
            try:
                await response.write(b" ")
            except ConnectionError:
                break
        return response

    async with upstream(redis, drip, request_timeout=1.0) as stackone:
        started = time.monotonic()
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(UpstreamUnavailable, match="timed out"):
                await read_all(stackone)
        took = time.monotonic() - started
        stop.set()
    assert took < 30  # two attempts of about a second each; unbounded, it never ends
    retried = [e for e in logs if e["event"] == "upstream_retry"]
    assert [(e["attempt"], e["attempts"], e["error"]) for e in retried] == [
        (1, 2, "upstream request timed out")
    ]
    assert retried[0]["account_id"] == ACCOUNT and retried[0]["wait"] >= 0
    assert retried[0]["log_level"] == "warning" and API_KEY not in repr(logs)


async def test_each_retried_server_error_is_logged(client: tuple[StackOneClient, SimLMS]) -> None:
    stackone, sim = client
    sim.faults.forced.extend([{"status": 503}] * 4)
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(UpstreamUnavailable):
            await read_all(stackone)
    retried = [e for e in logs if e["event"] == "upstream_retry"]
    assert [(e["attempt"], e["status"]) for e in retried] == [(1, 503), (2, 503), (3, 503)]


class HugePageLMS(SimLMS):
    """Answers every user's listing with one page of 100,000 records."""

    page = orjson.dumps({"data": [{"id": f"a{n}"} for n in range(100_000)], "next": None})

    def handle_list(self, user_id: str, headers: Any, query: Any) -> SimResponse:
        super().handle_list(user_id, headers, query)  # logs the request
        return SimResponse(200, self.page)


async def test_a_huge_page_fails_the_poll_with_a_clear_log_and_health_answers(
    redis_server: RedisServer, receiver: tuple[Receiver, str]
) -> None:
    """A page of 100,000 records where 2 were asked held the event loop for about a second
    and was read; now the poll fails at once, and says why."""
    sim = HugePageLMS(api_key=API_KEY)

    def failed() -> list[dict[str, Any]]:
        return [e for e in logs if e["event"] == "poll_failed"]

    async with served(sim) as lms_url:
        settings = make_settings(redis_server.url, lms_url, [endpoint(receiver[1])], ["u_1"])
        with structlog.testing.capture_logs() as logs:
            async with running(settings) as service, aiohttp.ClientSession() as http:
                await wait_until(failed, 15, "the poll to fail")
                async with http.get(f"{service.http_url}/healthz") as response:
                    assert response.status == 200
    assert failed()[0]["user_id"] == "u_1" and failed()[0]["error_type"] == "UpstreamMalformed"
    assert failed()[0]["error"] == "a page of 100000 records where page_size 2 was asked"


@pytest.mark.parametrize(
    ("user_id", "raw_path"),
    [
        ("..", None),  # was GET /unified/lms/assignments: the account's, sent as the user's
        (".", None),  # was GET /unified/lms/users/assignments
        ("...", "/unified/lms/users/.../assignments"),  # not a dot segment: its own path
        ("a..b", "/unified/lms/users/a..b/assignments"),
        ("../x", "/unified/lms/users/..%2Fx/assignments"),
        ("%2E%2E", "/unified/lms/users/%252E%252E/assignments"),
    ],
)
async def test_a_user_id_is_never_resolved_as_a_dot_segment(
    redis: Redis, user_id: str, raw_path: str | None
) -> None:
    seen: list[str] = []

    async def any_path(request: web.Request) -> web.Response:
        seen.append(request.raw_path.partition("?")[0])  # as sent, before any routing
        return web.json_response({"data": [], "next": None})

    async with upstream(redis, any_path) as stackone:
        if raw_path is None:
            with pytest.raises(UpstreamRejected) as caught:
                _ = [page async for page in stackone.pages(ACCOUNT, user_id, None)]
            assert caught.value.status is None  # no answer: nothing was sent
            assert seen == []
        else:
            _ = [page async for page in stackone.pages(ACCOUNT, user_id, None)]
            assert seen == [raw_path]
