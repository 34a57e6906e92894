"""The console in a real browser (Playwright driving Debian's Chromium): an operator signs
in, watches an endpoint pause and recover, replays a dead letter, sends a test event, finds
a user's events; hostile upstream and receiver data shows as text and runs nothing.

One browser for the whole session (its start is the slow part); each test has its own
context (cookies) and page. The service is driven: nothing happens between two steps of a
test but what the test does, so a page shows exactly the state the test made."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Dialog, Page, async_playwright, expect

from service.delivery.breaker import BASE_COOLDOWN
from service.sim.lms import SimLMS, start_sim_server
from service.sim.receiver import Answer, ReceivedEvent, Receiver, start_receiver_server
from service.store import keys
from service.store.linked_accounts import LinkedAccount
from tests.helpers import ACCOUNT, API_KEY, SECRET, Driven, driven, endpoint, make_settings
from tests.redis_server import RedisServer

# the browser and every fixture these tests use live on one event loop for the session
pytestmark = pytest.mark.asyncio(loop_scope="session")

ROOT = Path(__file__).resolve().parent.parent
SCREENSHOT = ROOT / "docs" / "console.png"
TOKEN = "browser-admin-token-3a9b"
SCRIPT = "<script>alert('title')</script>"
IMG = '"><img src=x onerror=alert(1)>'
RX_SCRIPT = '<script>alert("rx")</script><img src=y onerror=alert(2)>'


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium: str) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        # Debian's build: Playwright's own browser downloads are not used
        launched = await playwright.chromium.launch(executable_path=chromium)
        yield launched
        await launched.close()


@dataclass
class Stage:
    driver: Driven
    sim: SimLMS
    rx: Receiver
    page: Page
    url: str
    dialogs: list[str] = field(default_factory=list)

    async def sign_in(self) -> None:
        await self.page.goto(f"{self.url}/ui")
        await expect(self.page).to_have_url(f"{self.url}/ui/login")
        await self.page.get_by_label("Admin token").fill(TOKEN)
        await self.page.get_by_role("button", name="Sign in").click()
        await expect(self.page.get_by_role("heading", name="Overview")).to_be_visible()


@pytest_asyncio.fixture(loop_scope="session")
async def stage(redis_server: RedisServer, browser: Browser) -> AsyncIterator[Stage]:
    """Two endpoints on one receiver (`hr` and `archive`, told apart by path), user u_1
    with six assignments and u_2 with one, baselined; a signed-out browser page."""
    redis_server.flush()
    sim = SimLMS(api_key=API_KEY)
    sim_runner, lms_url = await start_sim_server(sim)
    rx = Receiver([SECRET])
    rx_runner, rx_url = await start_receiver_server(rx)
    for user, count in (("u_1", 6), ("u_2", 1)):
        for n in range(1, count + 1):
            sim.put_assignment(ACCOUNT, user, {"id": f"{user}_a{n}", "title": f"Course {n}"})
    settings = make_settings(
        redis_server.url,
        lms_url,
        [
            endpoint(f"{rx_url}/hr", "hr", concurrency=1),
            endpoint(f"{rx_url}/archive", "archive"),
        ],
        ["u_1", "u_2"],
        http={"admin_token": TOKEN},
        delivery={"retry_schedule": ["100ms"] * 3},
    )
    try:
        async with driven(settings, sim, http=True) as driver:
            await driver.baseline()
            assert driver.service.http_url is not None
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            stage = Stage(driver, sim, rx, page, driver.service.http_url)

            async def on_dialog(dialog: Dialog) -> None:
                stage.dialogs.append(dialog.message)
                await dialog.dismiss()

            page.on("dialog", on_dialog)
            try:
                yield stage
            finally:
                await context.close()
    finally:
        await rx_runner.cleanup()
        await sim_runner.cleanup()


def to_hr(event: ReceivedEvent) -> bool:
    return event.path.startswith("/hr/")


def change(sim: SimLMS, user: str, count: int, round_: int) -> None:
    for n in range(1, count + 1):
        sim.update_assignment(ACCOUNT, user, f"{user}_a{n}", x_round=round_)


async def test_an_operator_follows_a_failing_endpoint_replays_tests_and_searches(
    stage: Stage, tmp_path: Path
) -> None:
    page, driver, rx = stage.page, stage.driver, stage.rx
    await stage.sign_in()
    hr = page.locator('tr[data-endpoint="hr"]')
    await expect(hr.locator(".state")).to_have_text("active")

    # hr's receiver fails: five failures in a row pause it; archive delivers on
    rx.answer_for = lambda e: Answer(status=503) if to_hr(e) else None
    change(stage.sim, "u_1", 6, 1)
    # the next poll of u_1 reads the change: one interval on. In one loaded run out of
    # dozens that step attempted no delivery (not explained yet), so up to two more steps
    # may go: what this test is about is what the operator sees once hr is paused
    for _ in range(3):
        await driver.step(0.5)
        if (await driver.service.stores.endpoints.health("hr")).status == "paused":
            break
    await page.reload()
    await expect(hr.locator(".state")).to_have_text("paused")
    await expect(hr).to_contain_text("HTTP 503")
    await expect(page.locator('tr[data-endpoint="archive"] .state')).to_have_text("active")

    # it recovers, except for one event it keeps rejecting: that one is dead-lettered
    rejected = "u_1_a6"
    rx.answer_for = lambda e: (
        Answer(status=422, body="unknown course")
        if to_hr(e) and e.data.get("assignment_id") == rejected
        else None
    )
    await driver.step(BASE_COOLDOWN)
    # its retries come 100 ms apart, ±20%: how many 0.1 s steps they take depends on the
    # jitter each draws (the senders settle in any order), so step until it is dead
    for _ in range(20):
        await driver.step(0.1)
        if await driver.service.queue.dead_count("hr"):
            break
    assert await driver.service.queue.dead_count("hr") == 1
    await page.reload()
    await expect(hr.locator(".state")).to_have_text("active")
    await expect(hr.locator("td").nth(3)).to_have_text("1")
    # docs/operating.md's picture: written there only when asked (`make screenshot`), so a test run
    # leaves the checkout as it was
    shot = SCREENSHOT if os.environ.get("UPDATE_SCREENSHOT") else tmp_path / "console.png"
    await page.screenshot(path=shot, full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")

    # the endpoint's page: the dead letter, with the receiver's answer; replay it
    await hr.get_by_role("link", name="hr").click()
    dead = page.locator("#dead tbody tr[data-event]")
    await expect(dead).to_have_count(1)
    await expect(dead).to_contain_text("HTTP 422")
    dead_id = await dead.get_attribute("data-event")
    assert dead_id
    rx.answer_for = None
    await dead.get_by_role("button", name="Replay").click()
    await expect(page.locator(".flash")).to_contain_text(f"Replayed {dead_id}: 1 queued again.")
    await driver.deliver()
    await page.goto(f"{stage.url}/ui/events/{dead_id}")
    section = page.locator('section[data-endpoint="hr"]')
    await expect(section.locator(".outcome")).to_have_text("delivered")
    await expect(section).to_contain_text("HTTP 422")  # the attempts before, kept
    assert [e.status for e in rx.events if e.webhook_id == dead_id and to_hr(e)] == [200]

    # a test event, sent now, its answer shown
    await page.goto(f"{stage.url}/ui/endpoints/hr")
    await page.get_by_role("button", name="Send a test event").click()
    await expect(page.locator(".flash")).to_contain_text("delivered: HTTP 200")
    assert [e.type for e in rx.events if to_hr(e)][-1] == "webhook.test"

    # u_2's events, found by user id
    change(stage.sim, "u_2", 1, 1)
    await driver.step(0.5)
    await page.locator("nav").get_by_role("link", name="Events").click()
    await page.get_by_label("user").fill("u_2")
    await page.get_by_role("button", name="Search").click()
    rows = page.locator("tbody tr")
    await expect(rows).to_have_count(1)
    await expect(rows).to_contain_text("u_2_a1")
    await rows.get_by_role("link").first.click()
    await expect(page.locator("#event-body")).to_contain_text('"user_id": "u_2"')
    assert stage.dialogs == []


async def test_hostile_upstream_and_receiver_data_shows_as_text(stage: Stage) -> None:
    page, driver, rx = stage.page, stage.driver, stage.rx
    stage.sim.update_assignment(ACCOUNT, "u_2", "u_2_a1", title=SCRIPT, note=IMG)
    stage.sim.put_assignment(ACCOUNT, "u_2", {"id": IMG, "title": SCRIPT})
    rx.default_answer = Answer(status=200, body=RX_SCRIPT)
    await driver.step(0.5)
    await stage.sign_in()
    # the overview's recent events and the search list show the hostile assignment id
    await expect(page.get_by_text(IMG).first).to_be_visible()
    await page.goto(f"{stage.url}/ui/events?user_id=u_2")
    hostile = page.locator("tbody tr", has_text=IMG)
    await expect(hostile.first).to_be_visible()
    await hostile.first.get_by_role("link").first.click()
    body = page.locator("#event-body")
    await expect(body).to_contain_text(SCRIPT)
    await expect(page.get_by_text(RX_SCRIPT).first).to_be_visible()  # the receiver's answer
    await page.goto(f"{stage.url}/ui/endpoints/hr")
    await expect(page.get_by_text(RX_SCRIPT).first).to_be_visible()
    # nothing ran and nothing was made of it: one script (the console's own), no image
    assert await page.evaluate("document.scripts.length") == 1
    assert await page.evaluate("document.images.length") == 0
    assert stage.dialogs == []
    await page.evaluate("alert('probe')")  # the handler would have seen one
    assert stage.dialogs == ["probe"]


async def test_the_console_fits_a_phone(stage: Stage) -> None:
    page = stage.page
    await page.set_viewport_size({"width": 390, "height": 844})
    await stage.sign_in()
    for path in ("/ui", "/ui/endpoints/hr", "/ui/events", "/ui/users", "/ui/accounts"):
        await page.goto(f"{stage.url}{path}")
        # wide tables scroll inside their card; the page itself never scrolls sideways
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, path


async def test_an_operator_finds_accounts_by_state(
    redis_server: RedisServer, browser: Browser
) -> None:
    """Discovery found linked accounts (written as it writes them): the accounts page shows
    each one's state, provider and owner, an inactive one's reasons, pages on, and shows
    the upstream's hostile label as text."""
    redis_server.flush()
    sim = SimLMS(api_key=API_KEY)
    sim_runner, lms_url = await start_sim_server(sim)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [],
        ["u_1"],
        http={"admin_token": TOKEN},
        polling={"interval": "1h"},
        account_discovery={"enabled": True, "interval": "1h"},
    )
    try:
        async with driven(settings, sim, http=True) as driver:
            redis = driver.service.stores.redis
            found = [
                LinkedAccount(
                    id=f"acc_{n:03}",
                    provider="docebo",
                    origin_owner_name=f"Customer {n}",
                    status="active" if n % 2 else "inactive",
                    status_reasons=() if n % 2 else ("token expired",),
                    label=SCRIPT if n == 1 else None,
                )
                for n in range(1, 206)
            ]
            await redis.hset(keys.LINKED_ACCOUNTS, mapping={a.id: a.encode() for a in found})
            await redis.incr(keys.LINKED_VERSION)
            driver.service.operations.stores.accounts.forget_cache()
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            dialogs: list[str] = []
            page.on("dialog", lambda dialog: dialogs.append(dialog.message))
            assert driver.service.http_url is not None
            stage = Stage(driver, sim, Receiver([SECRET]), page, driver.service.http_url)
            await stage.sign_in()
            await page.locator("nav").get_by_role("link", name="Accounts").click()
            rows = page.locator("tr[data-account]")
            await expect(rows).to_have_count(100)
            hostile = page.locator('tr[data-account="acc_001"]')
            await expect(hostile).to_contain_text(SCRIPT)  # as text
            await expect(hostile).to_contain_text("Customer 1")
            await expect(hostile.locator(".state")).to_have_text("active")

            await page.locator("nav.states").get_by_role("link", name="inactive").click()
            await expect(rows).to_have_count(100)
            first = page.locator('tr[data-account="acc_002"]')
            await expect(first.locator(".state")).to_have_text("inactive")
            await expect(first).to_contain_text("token expired")
            await expect(first).to_contain_text("not read")
            await page.get_by_role("link", name="More accounts").click()
            await expect(rows).to_have_count(2)  # 102 inactive: 2 on the second page
            await expect(page.locator('tr[data-account="acc_204"]')).to_be_visible()
            await expect(page.get_by_role("link", name="More accounts")).to_have_count(0)
            assert await page.evaluate("document.scripts.length") == 1
            assert dialogs == []
            await context.close()
    finally:
        await sim_runner.cleanup()
