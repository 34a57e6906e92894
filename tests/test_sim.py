"""The simulated StackOne LMS, exercised over real loopback HTTP."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from service.sim.lms import SimLMS, start_sim_server
from service.sim.lms_state import NotFoundError, basic_auth_header, iso_ms, parse_iso_ms
from tests.helpers import Clock

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
T0 = 1_795_845_600.0  # 2026-11-28T00:00:00Z


Answer = tuple[int, Any, aiohttp.ClientResponse]


@dataclass
class Sim:
    lms: SimLMS
    base: str
    http: aiohttp.ClientSession

    async def call(
        self,
        path: str,
        account: str | None = "acc_1",
        auth: str | None = "sim_key",
        **params: str,
    ) -> Answer:
        """GET a list endpoint; returns (status, parsed JSON or raw text, response)."""
        headers = {}
        if auth is not None:
            headers["Authorization"] = basic_auth_header(auth)
        if account is not None:
            headers["x-account-id"] = account
        async with self.http.get(self.base + path, params=params, headers=headers) as resp:
            text = await resp.text()
            try:
                body: Any = await resp.json(content_type=None)
            except ValueError:
                body = text
            return resp.status, body, resp

    async def get(self, user: str = "u_1", **kwargs: Any) -> Answer:
        """List a user's assignments."""
        return await self.call(f"/unified/lms/users/{user}/assignments", **kwargs)

    async def account(self, **kwargs: Any) -> Answer:
        """List every assignment of the account."""
        return await self.call("/unified/lms/assignments", **kwargs)

    async def users(self, **kwargs: Any) -> Answer:
        """List the account's users."""
        return await self.call("/unified/lms/users", **kwargs)

    async def walk(
        self, lister: Callable[..., Awaitable[Answer]], **params: str
    ) -> list[list[dict[str, Any]]]:
        """Every page of a listing, following next."""
        pages: list[list[dict[str, Any]]] = []
        query = dict(params)
        while True:
            status, body, _ = await lister(**query)
            assert status == 200, body
            pages.append(body["data"])
            if not body["next"]:
                return pages
            query = {**params, "next": body["next"]}
            assert len(pages) < 50, "runaway cursor"

    async def all_pages(self, **params: str) -> list[list[dict[str, Any]]]:
        return await self.walk(self.get, **params)


@pytest.fixture
def clock() -> Clock:
    """A settable clock so timestamps and the rate limit are deterministic."""
    return Clock(T0)


@pytest.fixture
async def sim(clock: Clock) -> AsyncIterator[Sim]:
    lms = SimLMS(clock=clock)
    lms.seed(accounts=2, users=2, assignments=7)
    runner, base = await start_sim_server(lms)
    async with aiohttp.ClientSession() as http:
        yield Sim(lms, base, http)
    await runner.cleanup()


def error_shape(body: Any, status: int) -> None:
    assert body["statusCode"] == status
    assert isinstance(body["message"], str)
    assert ISO_MS.match(body["timestamp"])


# -- auth and addressing --------------------------------------------------------------------


async def test_missing_or_wrong_key_is_401(sim: Sim) -> None:
    for auth in (None, "wrong_key"):
        status, body, _ = await sim.get(auth=auth)
        assert status == 401
        error_shape(body, 401)
        assert body["message"] == "Unauthorized"
    assert [r.auth_ok for r in sim.lms.requests] == [False, False]


async def test_missing_account_header_is_400(sim: Sim) -> None:
    status, body, _ = await sim.get(account=None)
    assert status == 400
    error_shape(body, 400)


async def test_unknown_account_403_unknown_user_404(sim: Sim) -> None:
    status, body, _ = await sim.get(account="acc_nope")
    assert status == 403
    error_shape(body, 403)
    status, body, _ = await sim.get(user="u_nope")
    assert status == 404
    error_shape(body, 404)


async def test_url_encoded_ids(sim: Sim) -> None:
    sim.lms.put_assignment("acc x/1", "user x/1", {"id": "odd"})
    status, body, _ = await sim.get(user="user%20x%2F1", account="acc x/1")
    assert status == 200
    assert [r["id"] for r in body["data"]] == ["odd"]


# -- records and paging ---------------------------------------------------------------------


async def test_seed_is_deterministic_and_realistic(clock: Clock) -> None:
    a, b = SimLMS(clock=clock), SimLMS(clock=clock)
    a.seed(2, 3, 4)
    b.seed(2, 3, 4)
    assert a.snapshot() == b.snapshot()
    assert sorted(a.accounts) == ["acc_1", "acc_2"]
    assert sorted(a.accounts["acc_2"]) == ["u_1", "u_2", "u_3"]
    ids = [r["id"] for acc in a.accounts.values() for u in acc.values() for r in u.values()]
    assert len(ids) == len(set(ids)) == 24
    records = [r for acc in a.accounts.values() for u in acc.values() for r in u.values()]
    assert {r["status"]["value"] for r in records} == {"pending", "in_progress", "completed"}
    for r in records:
        assert ISO_MS.match(r["updated_at"]) and ISO_MS.match(r["created_at"])
        assert r["learning_object_type"]["value"] in ("course", "content")
        done = r["status"]["value"] == "completed"
        assert (r["progress"] == 100) == done and (r["completed_at"] is not None) == done


async def test_three_pages_return_every_record_once(sim: Sim) -> None:
    pages = await sim.all_pages(page_size="3")
    assert [len(p) for p in pages] == [3, 3, 1]
    ids = [r["id"] for p in pages for r in p]
    assert sorted(ids) == sorted(r["id"] for r in sim.lms.assignments("acc_1", "u_1"))
    assert len(set(ids)) == 7
    # a cursor can be read again: the same page comes back (stable paging)
    again = await sim.get(page_size="3", next=sim.lms.requests[-1].query["next"])
    assert again[1]["data"] == pages[-1] and again[1]["next"] is None


async def test_default_page_size_and_clamp(sim: Sim) -> None:
    for i in range(130):
        sim.lms.put_assignment("acc_1", "big", {"id": f"b{i}"})
    status, body, _ = await sim.get(user="big")
    assert len(body["data"]) == 25
    status, body, _ = await sim.get(user="big", page_size="1000")
    assert len(body["data"]) == 100
    status, body, _ = await sim.get(user="big", page_size="0")
    assert len(body["data"]) == 1
    status, body, _ = await sim.get(user="big", page_size="lots")
    assert status == 400
    error_shape(body, 400)
    status, body, _ = await sim.get(user="big", next="%%%garbage")
    assert status == 400


@pytest.mark.parametrize("param", ["filter[updated_after]", "updated_after"])
async def test_updated_after_is_strictly_after(sim: Sim, clock: Clock, param: str) -> None:
    stamps = []
    for i in range(5):
        clock.advance(1.5)
        stamps.append(sim.lms.put_assignment("acc_1", "f", {"id": f"f{i}"})["updated_at"])
    assert all(ISO_MS.match(s) for s in stamps)
    status, body, _ = await sim.get(user="f", **{param: stamps[1]})
    assert [r["id"] for r in body["data"]] == ["f2", "f3", "f4"]
    # the filter survives into later pages through the cursor
    pages = await sim.all_pages(user="f", page_size="1", **{param: stamps[2]})
    assert [r["id"] for p in pages for r in p] == ["f3", "f4"]
    status, body, _ = await sim.get(user="f", **{param: "yesterday"})
    assert status == 400


async def test_update_bumps_updated_at_and_keeps_unknown_fields(sim: Sim) -> None:
    rec = sim.lms.put_assignment("acc_1", "x", {"id": "k", "vendor_extra": {"a": [1, 2]}})
    first = rec["updated_at"]
    # same clock instant: the bump still moves strictly forward
    second = sim.lms.update_assignment("acc_1", "x", "k", due_date=iso_ms(T0 + 86400))
    assert parse_iso_ms(second["updated_at"]) > parse_iso_ms(first)
    done = sim.lms.progress("acc_1", "x", "k", 100)
    assert done["status"]["value"] == "completed" and done["completed_at"]
    status, body, _ = await sim.get(user="x", updated_after=first)
    assert status == 200
    assert body["data"][0]["vendor_extra"] == {"a": [1, 2]}
    assert body["data"][0]["status"]["value"] == "completed"
    # PUT of an existing record replaces it exactly (fields left out are gone)
    replaced = sim.lms.put_assignment("acc_1", "x", {"id": "k", "progress": 5})
    assert "vendor_extra" not in replaced and "status" not in replaced
    assert parse_iso_ms(replaced["updated_at"]) > parse_iso_ms(done["updated_at"])


# -- rate limit ------------------------------------------------------------------------------


async def test_rate_limit_429_with_integer_retry_after(sim: Sim, clock: Clock) -> None:
    sim.lms.set_rate_limit(60)  # 1 token/s, burst 6
    statuses = [(await sim.get())[0] for _ in range(7)]
    assert statuses == [200] * 6 + [429]
    status, body, resp = await sim.get()
    assert status == 429
    error_shape(body, 429)
    assert resp.headers["Retry-After"] == "1"
    clock.advance(1.0)
    assert (await sim.get())[0] == 200
    assert sim.lms.requests[-2].fault == "rate_limited"


# -- faults ---------------------------------------------------------------------------------


async def test_forced_faults_in_order(sim: Sim) -> None:
    sim.lms.faults.forced += [
        {"status": 503, "retry_after": 2},
        {"status": 500},
        {"malformed_json": True},
        {"wrong_shape": True},
        {"missing_id": True},
        {"delay": 0.2},
    ]
    status, body, resp = await sim.get()
    assert (status, resp.headers["Retry-After"]) == (503, "2")
    error_shape(body, 503)
    status, body, resp = await sim.get()
    assert status == 500 and "Retry-After" not in resp.headers
    status, body, _ = await sim.get()
    assert (status, body) == (200, '{"data": [')
    status, body, _ = await sim.get()
    assert (status, body["data"]) == (200, "not-a-list")
    status, body, _ = await sim.get()
    assert "id" not in body["data"][0] and all("id" in r for r in body["data"][1:])
    started = time.monotonic()
    status, body, _ = await sim.get()
    assert status == 200 and len(body["data"]) == 7
    assert time.monotonic() - started >= 0.2
    assert (await sim.get())[0] == 200  # all consumed
    assert sim.lms.assignments("acc_1", "u_1")[0]["id"]  # missing_id did not touch state
    faults = [r.fault for r in sim.lms.requests]
    assert faults == [
        "status",
        "status",
        "malformed_json",
        "wrong_shape",
        "missing_id",
        "delay",
        None,
    ]


async def test_error_rate_and_delay(sim: Sim) -> None:
    sim.lms.faults.error_rate = 1.0
    assert (await sim.get())[0] == 500
    sim.lms.faults.error_rate = 0.0
    sim.lms.faults.delay_seconds = 0.15
    started = time.monotonic()
    assert (await sim.get())[0] == 200
    assert time.monotonic() - started >= 0.15


async def test_page_delays_slow_down_one_page(sim: Sim) -> None:
    sim.lms.faults.page_delays = {1: 0.3}
    timings = []
    query: dict[str, str] = {"page_size": "3"}
    for _ in range(3):
        started = time.monotonic()
        status, body, _ = await sim.get(**query)
        timings.append(time.monotonic() - started)
        assert status == 200
        query["next"] = body["next"] or ""
    assert timings[1] >= 0.3 and timings[0] < 0.3 and timings[2] < 0.3


async def test_paging_quirks(sim: Sim) -> None:
    sim.lms.faults.max_page_records = 2
    pages = await sim.all_pages(page_size="5")
    assert [len(p) for p in pages] == [2, 2, 2, 1]  # short pages that still have a next
    sim.lms.faults.max_page_records = None
    sim.lms.faults.trailing_empty_page = True
    assert [len(p) for p in await sim.all_pages(page_size="7")] == [7, 0]
    sim.lms.faults.trailing_empty_page = False
    sim.lms.faults.runaway_next = True
    with pytest.raises(AssertionError, match="runaway"):
        await sim.all_pages(page_size="7")


async def test_client_giving_up_on_a_hung_request_does_not_block(sim: Sim) -> None:
    sim.lms.faults.forced.append({"delay": 30})
    url = f"{sim.base}/unified/lms/users/u_1/assignments"
    with pytest.raises(TimeoutError):
        async with sim.http.get(
            url, headers=sim.lms.auth_headers("acc_1"), timeout=aiohttp.ClientTimeout(total=0.2)
        ):
            pass
    # the fixture's runner.cleanup() must not wait out the 30 s (the test would be slow)


async def test_pause_holds_requests(sim: Sim, clock: Clock) -> None:
    sim.lms.faults.pause_all_until = clock.now + 0.2
    started = time.monotonic()
    assert (await sim.get())[0] == 200
    assert time.monotonic() - started >= 0.2
    assert sim.lms.requests[-1].fault == "paused"


# -- control API ----------------------------------------------------------------------------


async def test_control_api_records(sim: Sim) -> None:
    http, base = sim.http, sim.base + "/_sim"
    async with http.post(f"{base}/accounts/acc_9/users/new") as r:
        assert r.status == 201
    assert (await sim.get(user="new", account="acc_9"))[1]["data"] == []
    one = f"{base}/accounts/acc_9/users/new/assignments/z1"
    async with http.put(one, json={"progress": 10, "x_vendor": "kept"}) as r:
        created = await r.json()
    assert created["id"] == "z1" and created["status"]["value"] == "pending"
    async with http.patch(one, json={"progress": 50}) as r:
        patched = await r.json()
    assert patched["progress"] == 50 and patched["x_vendor"] == "kept"
    assert parse_iso_ms(patched["updated_at"]) > parse_iso_ms(created["updated_at"])
    status, body, _ = await sim.get(user="new", account="acc_9")
    assert status == 200 and body["data"] == [patched]
    async with http.delete(one) as r:
        assert r.status == 200
    async with http.delete(one) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    async with http.put(one, data=b"{not json") as r:
        assert r.status == 400 and (await r.json())["error"] == "bad_request"
    async with http.patch(one, json={"id": "other"}) as r:
        assert r.status == 400  # an id never changes
    async with http.patch(one, json={"progress": 1}) as r:
        assert r.status == 404  # gone; nothing to patch
    async with http.get(f"{base}/state") as r:
        state = await r.json()
    assert state["accounts"]["acc_9"]["new"] == []


async def test_control_api_faults_and_requests(sim: Sim) -> None:
    http, base = sim.http, sim.base + "/_sim"
    async with http.post(f"{base}/faults", json={"forced": [{"status": 502}]}) as r:
        assert r.status == 200
    async with http.post(
        f"{base}/faults", json={"forced": [{"wrong_shape": True}], "page_delays": {"3": 0.5}}
    ) as r:
        faults = await r.json()
    assert faults["forced"] == [{"status": 502}, {"wrong_shape": True}]
    assert faults["page_delays"] == {"3": 0.5}
    for bad in (
        {"forced": [{"status": 500, "delay": 1}]},
        {"nope": 1},
        {"error_rate": 2},
        {"forced": [{"missing_id": False}]},
    ):
        async with http.post(f"{base}/faults", json=bad) as r:
            assert r.status == 400, bad
    assert (await sim.get())[0] == 502
    async with http.delete(f"{base}/faults") as r:
        assert (await r.json())["forced"] == []
    assert (await sim.get())[0] == 200
    async with http.get(f"{base}/requests") as r:
        log = await r.json()
    assert [e["status"] for e in log] == [502, 200]
    assert log[0]["account_id"] == "acc_1" and log[0]["auth_ok"] is True
    async with http.delete(f"{base}/requests") as r:
        assert r.status == 200
    assert sim.lms.requests == []
    async with http.post(f"{base}/rate-limit", json={"per_minute": 6}) as r:
        assert (await r.json())["per_minute"] == 6
    assert [(await sim.get())[0] for _ in range(2)] == [200, 429]


async def test_churn_advances_assignments(clock: Clock) -> None:
    lms = SimLMS(clock=clock)
    lms.seed(1, 1, 3)
    before = {r["id"]: r for r in lms.assignments("acc_1", "u_1")}
    for _ in range(20):
        clock.advance(1)
        assert lms.churn_once() is not None
    after = lms.assignments("acc_1", "u_1")
    assert any(r["id"] not in before or r != before[r["id"]] for r in after)
    assert all(r["progress"] >= (before.get(r["id"]) or {"progress": 0})["progress"] for r in after)


# -- the account-wide assignments endpoint --------------------------------------------------


def ids_of(pages: list[list[dict[str, Any]]]) -> list[str]:
    return [r["id"] for page in pages for r in page]


async def test_account_endpoint_lists_every_user_once(sim: Sim) -> None:
    pages = await sim.walk(sim.account, page_size="3")
    assert [len(p) for p in pages] == [3, 3, 3, 3, 2]
    expected = {r["id"]: u for u in ("u_1", "u_2") for r in sim.lms.assignments("acc_1", u)}
    got = [r for p in pages for r in p]
    assert sorted(r["id"] for r in got) == sorted(expected)  # each record exactly once
    assert all(r["user_id"] == expected[r["id"]] and r["remote_user_id"] for r in got)
    logged = sim.lms.requests[-1]
    assert (logged.path, logged.user_id, logged.account_id) == (
        "/unified/lms/assignments",
        None,
        "acc_1",
    )
    _, other, _ = await sim.account(account="acc_2", page_size="100")
    assert len(other["data"]) == 14 and not {r["id"] for r in other["data"]} & set(expected)


async def test_account_endpoint_auth_and_addressing(sim: Sim) -> None:
    status, body, _ = await sim.account(auth="wrong_key")
    assert status == 401
    error_shape(body, 401)
    assert (await sim.account(account=None))[0] == 400
    status, body, _ = await sim.account(account="acc_nope")
    assert (status, body["message"]) == (403, "Account not found")
    sim.lms.put_assignment("acc x/1", "user x/1", {"id": "odd"})
    status, body, _ = await sim.account(account="acc%20x%2F1")
    assert [(r["id"], r["user_id"]) for r in body["data"]] == [("odd", "user x/1")]


async def test_account_filters(sim: Sim) -> None:
    lms = sim.lms
    _, body, _ = await sim.account(**{"filter[status]": "completed"}, page_size="100")
    completed = [
        r["id"]
        for u in ("u_1", "u_2")
        for r in lms.assignments("acc_1", u)
        if r["status"]["value"] == "completed"
    ]
    assert completed and sorted(r["id"] for r in body["data"]) == sorted(completed)
    pages = await sim.walk(sim.account, user_id="u_2", page_size="2")
    assert ids_of(pages) == [r["id"] for r in lms.assignments("acc_1", "u_2")]
    assert lms.requests[-1].user_id == "u_2"
    remote = lms.assignments("acc_1", "u_1")[0]["remote_user_id"]
    _, body, _ = await sim.account(remote_user_id=remote, page_size="100")
    assert {r["user_id"] for r in body["data"]} == {"u_1"} and len(body["data"]) == 7
    assert (await sim.account(user_id="u_nobody"))[1] == {"data": [], "next": None}


@pytest.mark.parametrize("param", ["filter[updated_after]", "updated_after"])
async def test_account_updated_after_is_strictly_after(sim: Sim, clock: Clock, param: str) -> None:
    stamps = []
    for i in range(4):
        clock.advance(1.5)
        user = ("u_1", "u_2")[i % 2]
        stamps.append(sim.lms.put_assignment("acc_1", user, {"id": f"f{i}"})["updated_at"])
    _, body, _ = await sim.account(**{param: stamps[0]})
    assert [r["id"] for r in body["data"]] == ["f1", "f2", "f3"]
    # the filter survives into later pages through the cursor, with a narrowing filter too
    pages = await sim.walk(sim.account, page_size="1", user_id="u_2", **{param: stamps[0]})
    assert ids_of(pages) == ["f1", "f3"]


async def test_account_paging_quirks_and_shared_faults(sim: Sim) -> None:
    sim.lms.faults.max_page_records = 4
    pages = await sim.walk(sim.account, page_size="10")
    assert [len(p) for p in pages] == [4, 4, 4, 2]  # short pages that still have a next
    assert len(set(ids_of(pages))) == 14
    sim.lms.faults.max_page_records = None
    sim.lms.faults.trailing_empty_page = True
    assert [len(p) for p in await sim.walk(sim.account, page_size="14")] == [14, 0]
    sim.lms.faults.trailing_empty_page = False
    sim.lms.faults.forced += [{"status": 503, "retry_after": 3}, {"missing_id": True}]
    status, body, resp = await sim.account()
    assert (status, resp.headers["Retry-After"]) == (503, "3")
    status, body, _ = await sim.users()
    assert "id" not in body["data"][0] and "id" in body["data"][1]
    # one rate limit for every endpoint of the key (burst of 6)
    sim.lms.set_rate_limit(60)
    for _ in range(2):
        statuses = [(await sim.get())[0], (await sim.account())[0], (await sim.users())[0]]
        assert statuses == [200] * 3
    assert (await sim.account())[0] == 429


async def test_a_walk_during_changes_returns_each_record_once(sim: Sim, clock: Clock) -> None:
    lms = sim.lms
    before = {r["id"] for u in ("u_1", "u_2") for r in lms.assignments("acc_1", u)}
    _, body, _ = await sim.account(page_size="5")
    seen = [r["id"] for r in body["data"]]
    # a record already read and one not yet read change; a new one is assigned
    clock.advance(1)
    lms.progress("acc_1", "u_1", seen[0], 100)
    later = lms.assignments("acc_1", "u_2")[-1]["id"]
    lms.progress("acc_1", "u_2", later, 50)
    lms.put_assignment("acc_1", "u_1", {"id": "new"})
    rest = await sim.walk(sim.account, page_size="5", next=body["next"])
    seen += ids_of(rest)
    assert len(seen) == len(set(seen)) == len(before) + 1
    assert set(seen) == before | {"new"}
    changed = next(r for p in rest for r in p if r["id"] == later)
    assert changed["progress"] == 50  # read after its change: it kept its place


async def test_a_user_removed_mid_walk_disappears(sim: Sim) -> None:
    lms = sim.lms
    _, body, _ = await sim.account(page_size="3")
    first = [r["id"] for r in body["data"]]
    assert {r["user_id"] for r in body["data"]} == {"u_1"}
    removed = lms.remove_user("acc_1", "u_2")
    assert removed["id"] == "u_2"
    rest = await sim.walk(sim.account, page_size="3", next=body["next"])
    assert first + ids_of(rest) == [r["id"] for r in lms.assignments("acc_1", "u_1")]
    assert [u["id"] for u in (await sim.users())[1]["data"]] == ["u_1"]
    assert (await sim.get(user="u_2"))[0] == 404
    with pytest.raises(NotFoundError):
        lms.remove_user("acc_1", "u_2")


async def test_records_written_straight_into_accounts_are_listed(sim: Sim) -> None:
    """As the benchmark's bulk loader writes them: they join the order at the next walk."""
    records = sim.lms.accounts["acc_1"].setdefault("bulk", {})
    records["b1"] = {"id": "b1", "user_id": "bulk", "updated_at": iso_ms(T0)}
    pages = await sim.walk(sim.account, page_size="100")
    assert ids_of(pages)[-1] == "b1"
    assert "bulk" in [u["id"] for u in (await sim.users())[1]["data"]]


async def test_account_fault_switches(sim: Sim, clock: Clock) -> None:
    http, base = sim.http, sim.base + "/_sim"
    mark = iso_ms(clock.now)  # after every seeded record
    assert (await sim.account(**{"filter[updated_after]": mark}))[1]["data"] == []
    async with http.post(f"{base}/faults", json={"account_filter_ignored": True}) as r:
        assert (await r.json())["account_filter_ignored"] is True
    status, body, _ = await sim.account(**{"filter[updated_after]": mark}, page_size="100")
    assert len(body["data"]) == 14  # older than the bound, as a provider without the filter
    assert (await sim.get(**{"filter[updated_after]": mark}))[1]["data"] == []
    async with http.post(f"{base}/faults", json={"account_endpoint_status": 501}) as r:
        assert (await r.json())["account_endpoint_status"] == 501
    status, body, _ = await sim.account()
    assert status == 501
    error_shape(body, 501)
    assert sim.lms.requests[-1].fault == "account_endpoint_status"
    assert (await sim.get())[0] == 200 and (await sim.users())[0] == 200
    for bad in ({"account_endpoint_status": 200}, {"account_endpoint_status": "404"}):
        async with http.post(f"{base}/faults", json=bad) as r:
            assert r.status == 400, bad
    async with http.post(f"{base}/faults", json={"account_filter_ignored": 1}) as r:
        assert r.status == 400
    async with http.post(f"{base}/faults", json={"account_endpoint_status": None}) as r:
        assert (await r.json())["account_endpoint_status"] is None
    assert (await sim.account())[0] == 200


@pytest.mark.parametrize("lister", ["account", "users"])
async def test_account_wide_bad_input_is_400(sim: Sim, lister: str) -> None:
    listing = getattr(sim, lister)
    for params in (
        {"filter[updated_after]": "yesterday"},
        {"updated_after": "2026-13-01"},
        {"next": "%%%garbage"},
        {"next": "eyJwIjogMX0"},  # valid base64 JSON, not a cursor
        {"page_size": "lots"},
    ):
        status, body, _ = await listing(**params)
        assert status == 400, params
        error_shape(body, 400)
    # a cursor belongs to the listing that made it
    cursor = (await sim.get(page_size="1"))[1]["next"]
    assert (await listing(next=cursor))[0] == 400


# -- the users endpoint ---------------------------------------------------------------------


async def test_users_have_plausible_metadata(sim: Sim) -> None:
    status, body, _ = await sim.users()
    assert status == 200 and body["next"] is None
    u1, u2 = body["data"]
    assert (u1["id"], u2["id"]) == ("u_1", "u_2")
    assert u1["active"] is True and u1["email"] == "u_1@example.com"
    assert u1["remote_id"] == sim.lms.assignments("acc_1", "u_1")[0]["remote_user_id"]
    expected = {"external_reference", "phone_number", "name", "unified_custom_fields"}
    assert expected <= set(u1) and ISO_MS.match(u1["created_at"])
    assert ISO_MS.match(u1["updated_at"])
    assert sim.lms.requests[-1].path == "/unified/lms/users"


async def test_users_filters_and_paging(sim: Sim, clock: Clock) -> None:
    lms = sim.lms
    for n in range(3, 8):
        lms.add_user("acc_1", f"u_{n}")
    mark = lms.now_iso()
    clock.advance(1)
    lms.set_user("acc_1", "u_4", email="Ada@Example.com", external_reference="E-4")
    lms.set_user("acc_1", "u_6", active=False)
    pages = await sim.walk(sim.users, page_size="3")
    assert [len(p) for p in pages] == [3, 3, 1]
    assert ids_of(pages) == [f"u_{n}" for n in range(1, 8)]
    lms.faults.max_page_records = 2
    assert [len(p) for p in await sim.walk(sim.users, page_size="3")] == [2, 2, 2, 1]
    lms.faults.max_page_records = None
    by = {
        "filter[email]": "ada@example.com",
        "filter[external_reference]": "E-4",
    }
    for name, value in by.items():
        assert [u["id"] for u in (await sim.users(**{name: value}))[1]["data"]] == ["u_4"]
    pages = await sim.walk(sim.users, page_size="1", **{"filter[updated_after]": mark})
    assert [(u["id"], u["active"]) for p in pages for u in p] == [("u_4", True), ("u_6", False)]


async def test_set_user_bumps_updated_at_strictly(sim: Sim) -> None:
    lms = sim.lms
    first = lms.set_user("acc_1", "u_9", name="Nine")
    assert first["name"] == "Nine" and first["email"] == "u_9@example.com"
    second = lms.set_user("acc_1", "u_9", active=False)  # the same clock instant
    assert parse_iso_ms(second["updated_at"]) > parse_iso_ms(first["updated_at"])
    assert second["name"] == "Nine" and second["created_at"] == first["created_at"]
    with pytest.raises(ValueError):
        lms.set_user("acc_1", "u_9", id="u_10")
    with pytest.raises(ValueError):
        lms.set_user("acc_1", "u_9", active="no")


async def test_control_api_users(sim: Sim) -> None:
    http, base = sim.http, sim.base + "/_sim"
    one = f"{base}/accounts/acc_1/users/u_new"
    async with http.post(one, json={"name": "Nora", "email": "nora@corp.example"}) as r:
        created = await r.json()
        assert r.status == 201
    assert (created["id"], created["name"], created["active"]) == ("u_new", "Nora", True)
    async with http.post(f"{base}/accounts/acc_1/users/u_plain") as r:
        assert r.status == 201 and (await r.json())["email"] == "u_plain@example.com"
    async with http.patch(one, json={"active": False}) as r:
        patched = await r.json()
    assert patched["active"] is False and patched["name"] == "Nora"
    assert parse_iso_ms(patched["updated_at"]) > parse_iso_ms(created["updated_at"])
    _, body, _ = await sim.users(**{"filter[email]": "nora@corp.example"})
    assert body["data"] == [patched]
    for bad in ({"active": "no"}, {"id": "other"}):
        async with http.patch(one, json=bad) as r:
            assert r.status == 400, bad
    async with http.patch(f"{base}/accounts/acc_1/users/u_ghost", json={"name": "x"}) as r:
        assert r.status == 404
    sim.lms.put_assignment("acc_1", "u_new", {"id": "n1"})
    async with http.delete(one) as r:
        assert r.status == 200 and (await r.json())["id"] == "u_new"
    async with http.delete(one) as r:
        assert r.status == 404 and (await r.json())["error"] == "not_found"
    assert "n1" not in ids_of(await sim.walk(sim.account, page_size="100"))
    async with http.get(f"{base}/state") as r:
        state = await r.json()
    assert "u_new" not in state["accounts"]["acc_1"]
    assert [u["id"] for u in state["users"]["acc_1"]] == ["u_1", "u_2", "u_plain"]
