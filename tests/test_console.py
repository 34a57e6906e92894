"""The operator console (/ui) over HTTP: off without an admin token, sign-in, the session
cookie, CSRF and origin checks, the security headers, and its pages' data."""

from __future__ import annotations

import html
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import aiohttp
import pytest
from redis.asyncio import Redis

from service.api.console.session import SESSION_SECONDS, Sessions
from service.api.console.stats import HOUR_MS, last_hour
from service.api.sign_in_limit import FAILURES_PER_CLIENT, WINDOW_SECONDS
from service.contract.admin import Attempt
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from service.store import keys
from service.store.limits import api_key_rate
from tests.helpers import ACCOUNT, Driven, driven, endpoint, make_settings
from tests.redis_server import RedisServer

TOKEN = "console-admin-token-5c1d"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Console:
    driver: Driven
    url: str
    sim: SimLMS
    rx: Receiver

    def client(self) -> aiohttp.ClientSession:
        # unsafe: the jar keeps cookies of an IP address (the test server's 127.0.0.1)
        return aiohttp.ClientSession(base_url=self.url, cookie_jar=aiohttp.CookieJar(unsafe=True))


@pytest.fixture
async def console(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str]
) -> AsyncIterator[Console]:
    sim, lms_url = lms
    rx, rx_url = receiver
    for user in ("u_1", "u_2"):
        sim.put_assignment(ACCOUNT, user, {"id": f"{user}_a1"})
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1", "u_2"],
        http={"admin_token": TOKEN},
        polling={"interval": "1h"},
    )
    async with driven(settings, sim, http=True) as driver:
        assert await driver.poll() == 0  # the users are scheduled (an hour out), none is due
        assert driver.service.http_url is not None
        yield Console(driver, driver.service.http_url, sim, rx)


async def signed_in(http: aiohttp.ClientSession) -> str:
    """Sign in; the CSRF token of the session."""
    async with http.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as r:
        assert r.status == 303 and r.headers["Location"] == "/ui"
    return await csrf_of(http, "/ui/users")


async def csrf_of(http: aiohttp.ClientSession, path: str) -> str:
    async with http.get(path, allow_redirects=False) as r:
        assert r.status == 200, r.headers.get("Location")
        found = _CSRF.search(await r.text())
    assert found is not None
    return found.group(1)


def assert_hardened(response: aiohttp.ClientResponse) -> None:
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "form-action 'self'" in csp
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert response.headers["Cache-Control"] == "no-store"


async def test_the_console_is_off_without_an_admin_token(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str]
) -> None:
    settings = make_settings(redis_server.url, lms[1], [], ["u_1"])
    async with driven(settings, http=True) as driver, aiohttp.ClientSession() as http:
        for path in ("/ui", "/ui/login", "/ui/static/console.css"):
            async with http.get(f"{driver.service.http_url}{path}") as r:
                assert r.status == 404, path
        async with http.post(f"{driver.service.http_url}/ui/login", data={"token": "x"}) as r:
            assert r.status == 404


async def test_without_a_session_every_page_leads_to_sign_in(console: Console) -> None:
    async with console.client() as http:
        for path in ("/ui", "/ui/endpoints/hr", "/ui/events", "/ui/users", "/ui/nowhere"):
            async with http.get(path, allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (303, "/ui/login"), path
                assert_hardened(r)
        async with http.post("/ui/users/poll", data={}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")
        async with http.get("/ui/login") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert_hardened(r)
            page = await r.text()
            assert '<form method="post" action="/ui/login">' in page
            assert 'type="password"' in page and "<script>" not in page
        async with http.get("/ui/static/console.css") as r:
            assert r.status == 200
            assert_hardened(r)


async def test_sign_in_sets_a_strict_http_only_session_cookie(console: Console) -> None:
    async with console.client() as http:
        async with http.post("/ui/login", data={"token": "wrong"}, allow_redirects=False) as r:
            assert r.status == 401 and "Set-Cookie" not in r.headers
            assert "not the admin token" in await r.text()
        # the token in a URL signs no one in
        async with http.get(f"/ui/login?token={TOKEN}", allow_redirects=False) as r:
            assert r.status == 200 and "Set-Cookie" not in r.headers
        async with http.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui")
            assert_hardened(r)
            cookie = r.headers["Set-Cookie"]
        assert cookie.startswith("lw_console=")
        attributes = {a.strip().split("=")[0].lower() for a in cookie.split(";")[1:]}
        assert {"httponly", "path", "max-age", "samesite"} <= attributes
        assert "secure" not in attributes  # served over http: a Secure cookie never came back
        assert "Path=/ui" in cookie and "SameSite=Strict" in cookie
        assert f"Max-Age={SESSION_SECONDS}" in cookie and TOKEN not in cookie
        async with http.get("/ui/login", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui")
    async with console.client() as http:
        headers = {"X-Forwarded-Proto": "https"}
        async with http.post(
            "/ui/login", data={"token": TOKEN}, headers=headers, allow_redirects=False
        ) as r:
            assert "; Secure" in r.headers["Set-Cookie"]


async def test_forged_and_expired_sessions_are_refused(console: Console) -> None:
    async with console.client() as http:
        await signed_in(http)
        cookie = next(c for c in http.cookie_jar if c.key == "lw_console")
        expires, nonce, signature = cookie.value.split(".")
        forgeries = [
            f"{int(expires) + 3600}.{nonce}.{signature}",  # a longer session
            f"{expires}.{nonce}x.{signature}",
            f"{expires}.{nonce}.{signature[:-2]}",
            f"{expires}.{nonce}",
            "",
        ]
    for forged in forgeries:
        async with console.client() as http:
            http.cookie_jar.update_cookies({"lw_console": forged})
            async with http.get("/ui/users", allow_redirects=False) as r:
                assert r.status == 303, forged
    async with console.client() as http:
        await signed_in(http)
        console.driver.clock.advance(SESSION_SECONDS - 5)
        async with http.get("/ui/users", allow_redirects=False) as r:
            assert r.status == 200
        console.driver.clock.advance(10)
        async with http.get("/ui/users", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")


async def test_every_change_needs_the_session_csrf_token_and_this_origin(
    console: Console,
) -> None:
    form = {"account_id": ACCOUNT, "user_id": "u_1", "q": ""}
    async with console.client() as other:
        stale = await signed_in(other)  # another session's token
    async with console.client() as http:
        csrf = await signed_in(http)
        assert csrf != stale
        refused = [
            ({**form}, {}),
            ({**form, "csrf": "nope"}, {}),
            ({**form, "csrf": stale}, {}),
            ({**form, "csrf": csrf}, {"Origin": "https://evil.example"}),
            ({**form, "csrf": csrf}, {"Origin": "null"}),
            ({**form, "csrf": csrf}, {"Referer": "https://evil.example/ui/users"}),
        ]
        for data, headers in refused:
            async with http.post(
                "/ui/users/poll", data=data, headers=headers, allow_redirects=False
            ) as r:
                assert r.status == 403, (data, headers)
                assert r.content_type == "text/html"
                assert_hardened(r)
        assert await console.driver.poll() == 0  # none of them asked for a poll
        origin = {"Origin": console.url, "Referer": f"{console.url}/ui/users"}
        async with http.post(
            "/ui/users/poll",
            data={**form, "csrf": csrf},
            headers=origin,
            allow_redirects=False,
        ) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/users?q=")
        assert await console.driver.poll() == 1
        # the page the change leads back to says what it did, once
        async with http.get("/ui/users?q=") as r:
            assert f"{ACCOUNT}/u_1 is polled now." in await r.text()
        async with http.get("/ui/users?q=") as r:
            assert "is polled now" not in await r.text()


async def test_sign_out_clears_the_session(console: Console) -> None:
    async with console.client() as http:
        csrf = await signed_in(http)
        async with http.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")
        async with http.get("/ui/users", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")


async def test_sign_out_ends_the_session_on_the_server_a_copied_cookie_too(
    console: Console, redis: Redis
) -> None:
    async with console.client() as http:
        csrf = await signed_in(http)
        copied = next(c for c in http.cookie_jar if c.key == "lw_console").value
        async with http.post("/ui/logout", data={"csrf": csrf}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")
    async with console.client() as thief:
        thief.cookie_jar.update_cookies({"lw_console": copied})
        async with thief.get("/ui/users", allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")
        form = {"account_id": ACCOUNT, "user_id": "u_1", "q": "", "csrf": csrf}
        async with thief.post("/ui/users/poll", data=form, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui/login")
        async with thief.get("/ui/login", allow_redirects=False) as r:
            assert r.status == 200  # the sign-in page, not back to /ui (a loop)
    assert await console.driver.poll() == 0  # the copied cookie asked for nothing
    # remembered only as long as the cookie would have been valid
    nonce = copied.split(".")[1]
    assert 0 < await redis.ttl(keys.console_signed_out(nonce)) <= SESSION_SECONDS
    async with console.client() as http:  # signing in again works
        await signed_in(http)


async def test_guessing_the_token_is_limited_per_client_and_logged_once_a_window(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    async with console.client() as http:
        for _ in range(FAILURES_PER_CLIENT):
            async with http.post("/ui/login", data={"token": "guess"}) as r:
                assert r.status == 401
        async with http.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert r.status == 429 and r.content_type == "text/html"
            assert 0 < int(r.headers["Retry-After"]) <= WINDOW_SECONDS
            assert "Too many failed sign-ins" in await r.text()
            assert "Set-Cookie" not in r.headers  # even the right token, unchecked
            assert_hardened(r)
        # the admin API guesses the same token: the same limit, answered in JSON
        wrong = {"Authorization": "Bearer guess"}
        async with http.get("/admin/endpoints", headers=wrong) as r:
            assert r.status == 429 and "Retry-After" in r.headers
            assert (await r.json())["error"] == "too many failed sign-ins"
    # another client (another loopback address) signs in with the right token
    elsewhere = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
    async with aiohttp.ClientSession(base_url=console.url, connector=elsewhere) as other:
        async with other.post("/ui/login", data={"token": TOKEN}, allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (303, "/ui")
    out = capsys.readouterr().out
    assert "sign_in" not in out  # nothing a guess, one summary when the window is over
    console.driver.clock.advance(WINDOW_SECONDS)
    async with console.client() as http:
        async with http.post("/ui/login", data={"token": "guess"}) as r:
            assert r.status == 401  # the window is over: this client may try again
    (summary,) = [line for line in capsys.readouterr().out.splitlines() if "sign_in" in line]
    assert "sign_in_failures" in summary and f"failures={FAILURES_PER_CLIENT}" in summary
    assert "refused=2" in summary and "127.0.0.1" in summary and "guess" not in summary


async def test_users_page_searches_and_polls_now(console: Console) -> None:
    async with console.client() as http:
        csrf = await signed_in(http)
        async with http.get("/ui/users", params={"q": "U_2"}) as r:
            page = await r.text()
        assert 'data-user="u_2"' in page and 'data-user="u_1"' not in page
        assert "1 tracked user matches." in page
        data = {"account_id": ACCOUNT, "user_id": "u_9", "q": "", "csrf": csrf}
        async with http.post("/ui/users/poll", data=data) as r:
            assert f"{ACCOUNT}/u_9 is not tracked." in await r.text()
        async with http.post("/ui/users/poll", data={**data, "user_id": "u_2"}) as r:
            assert f"{ACCOUNT}/u_2 is polled now." in await r.text()
        assert await console.driver.poll() == 1


async def test_unknown_pages_and_bad_input_get_html_errors(console: Console) -> None:
    async with console.client() as http:
        csrf = await signed_in(http)
        for path in ("/ui/endpoints/nope", "/ui/nowhere"):
            async with http.get(path) as r:
                assert r.status == 404 and r.content_type == "text/html", path
                assert_hardened(r)
        async with http.post("/ui/endpoints/nope/enable", data={"csrf": csrf}) as r:
            assert r.status == 404 and r.content_type == "text/html"
        async with http.post(
            "/ui/endpoints/hr/redeliver",
            data={
                "csrf": csrf,
                "since": "2026-01-02T00:00",
                "until": "2026-01-01T00:00",
                "outcome": "any",
            },
        ) as r:
            assert r.status == 400 and "`since` is after `until`" in await r.text()
        async with http.post(
            "/ui/endpoints/hr/redeliver", data={"csrf": csrf, "since": "yesterday"}
        ) as r:
            assert r.status == 400 and "`since`: must be epoch milliseconds" in await r.text()
        # the events search refuses what the admin API's does, in the same words
        async with http.get("/ui/events", params={"outcome": "lost"}) as r:
            assert r.status == 400 and "`outcome` must be one of" in await r.text()
        window = {"since": "2026-01-02T00:00", "until": "2026-01-01T00:00"}
        async with http.get("/ui/events", params=window) as r:
            assert r.status == 400 and "`since` is after `until`" in await r.text()


@pytest.mark.parametrize(
    "form",
    [
        {"since": "9999999999999999", "outcome": "any"},  # epoch ms past 9999-12-31
        {"since": "9999-12-31T23:59:59-01:00", "outcome": "any"},  # past it, by its offset
        {"since": "2026-01-01T00:00", "until": "0000000000000001", "outcome": "any"},
        {"since": "2026-01-01T00:00", "outcome": "lost"},
        {"since": "2026-01-01T00:00"},
        {"outcome": "any"},
    ],
)
async def test_a_redeliver_form_is_refused_as_the_api_refuses_its_body(
    console: Console, form: dict[str, str]
) -> None:
    """The console reads its form as the admin API reads its body: what one refuses, the
    other refuses in the same words (on the console's error page, never a 500)."""
    async with console.client() as http:
        csrf = await signed_in(http)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with http.post("/admin/endpoints/hr/redeliver", json=form, headers=auth) as r:
            assert r.status == 400, await r.text()
            refusal = (await r.json())["detail"]
        async with http.post("/ui/endpoints/hr/redeliver", data={"csrf": csrf, **form}) as r:
            assert (r.status, r.content_type) == (400, "text/html")
            assert refusal in html.unescape(await r.text())


async def test_the_admin_token_never_appears_in_pages_or_logs(
    console: Console, capsys: pytest.CaptureFixture[str]
) -> None:
    async with console.client() as http:
        await signed_in(http)
        for path in ("/ui/login", "/ui/users", "/ui/nowhere"):
            async with http.get(path) as r:
                assert TOKEN not in await r.text()
                assert TOKEN not in str(r.headers) and TOKEN not in str(r.url)
        async with http.post("/ui/login", data={"token": TOKEN + "x"}) as r:
            assert TOKEN not in await r.text()
    captured = capsys.readouterr()
    assert "console_signed_in" in captured.out + captured.err  # the log was captured
    assert TOKEN not in captured.out + captured.err


def test_a_session_verifies_on_any_replica_with_the_token_and_no_other() -> None:
    now = [1_000_000.0]
    one, other = Sessions("token-a", lambda: now[0]), Sessions("token-a", lambda: now[0])
    session = one.issue()
    assert other.verify(session.cookie) == session
    assert other.csrf_matches(session, one.csrf_token(session))
    assert Sessions("token-b", lambda: now[0]).verify(session.cookie) is None
    # a message sealed in one session opens in that session only
    sealed = one.seal_flash(session, "Replayed <b>3</b>")
    assert other.open_flash(session, sealed) == "Replayed <b>3</b>"
    assert one.open_flash(one.issue(), sealed) is None
    assert one.open_flash(session, sealed[:-1]) is None
    now[0] += SESSION_SECONDS
    assert one.verify(session.cookie) is None


def test_last_hour_from_the_delivery_log() -> None:
    now = 10 * HOUR_MS

    def attempt(ago_ms: int, status: int | None, duration_ms: int) -> Attempt:
        return Attempt(
            attempt=1,
            started_at_ms=now - ago_ms,
            duration_ms=duration_ms,
            status=status,
            error=None if status else "timeout",
            response_body=None,
            response_truncated=False,
            next_attempt_at_ms=None,
        )

    attempts = [attempt(1000 * n, 200, 10 * n) for n in range(1, 20)]
    attempts += [attempt(5000, 503, 900), attempt(6000, None, 2000)]  # a 503, a timeout
    attempts += [attempt(HOUR_MS + 1, 500, 5)]  # before the hour
    stats = last_hour(attempts, now, read_limit=500)
    assert (stats.attempts, stats.succeeded, stats.partial) == (21, 19, False)
    assert stats.success_rate == pytest.approx(19 / 21)
    assert (stats.p50_ms, stats.p95_ms) == (110, 900)
    # every attempt read lies within the hour: older ones may exist unread
    assert last_hour(attempts[:3], now, read_limit=3).partial
    empty = last_hour([], now, read_limit=10)
    assert (empty.attempts, empty.success_rate, empty.p50_ms) == (0, None, None)


async def test_redeliver_enable_and_event_pages(console: Console) -> None:
    driver = console.driver
    rx_events = console.rx.events

    async def poll_both_now() -> None:
        # not by moving the clock an interval (1 h) on: the receiver would refuse
        # signatures made an hour from its own now
        for user in ("u_1", "u_2"):
            assert await driver.service.operations.poll_now(ACCOUNT, user)
        await driver.step()

    await poll_both_now()  # the baselines
    console.sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", x_round=1)
    console.sim.update_assignment(ACCOUNT, "u_2", "u_2_a1", x_round=1)
    await poll_both_now()  # two changes, delivered
    delivered = [e.webhook_id for e in rx_events]
    assert len(delivered) == 2
    async with console.client() as http:
        csrf = await signed_in(http)
        async with http.get("/ui/events") as r:
            page = await r.text()
        assert all(f"/ui/events/{event_id}" in page for event_id in delivered)
        async with http.get("/ui/events", params={"cursor": "c1.bogus"}) as r:
            assert r.status == 400 and "cursor" in await r.text()
        async with http.get(f"/ui/events/{delivered[0]}") as r:
            page = await r.text()
        assert "delivered" in page and "HTTP 200" in page
        async with http.get("/ui/events/evt_nope") as r:
            assert r.status == 404
        # redeliver what was delivered in the last hour: the same ids, sent again
        since = datetime.fromtimestamp(driver.clock() - 3600, UTC).strftime("%Y-%m-%dT%H:%M")
        data = {"csrf": csrf, "since": since, "until": "", "outcome": "delivered"}
        async with http.post("/ui/endpoints/hr/redeliver", data=data) as r:
            assert "2 events queued again." in await r.text()
        await driver.deliver()
        assert sorted(e.webhook_id or "" for e in rx_events[2:]) == sorted(delivered)
        async with http.post("/ui/endpoints/hr/enable", data={"csrf": csrf}) as r:
            assert "hr is active." in await r.text()


async def test_the_overview_shows_upstream_429s_and_the_key_paused(console: Console) -> None:
    service = console.driver.service
    console.sim.faults.forced.append({"status": 429, "retry_after": "1"})
    assert await service.operations.poll_now(ACCOUNT, "u_1")
    await console.driver.poll()  # answered 429, paused a second (Redis' clock), read again
    async with console.client() as http:
        await signed_in(http)
        async with http.get("/ui") as r:
            page = " ".join((await r.text()).split())
        assert "<dt>429 answers</dt><dd>1 <small" in page
        assert "<dt>API key paused</dt><dd>no</dd>" in page
        # a pause as a 429 in another process would set it: every replica shows it
        budget = api_key_rate(service.settings.stackone.max_requests_per_minute)
        await service.stores.limiter.rate(budget).pause(120)
        async with http.get("/ui") as r:
            page = " ".join((await r.text()).split())
        assert re.search(r"for (120|119) s more \(Retry-After\)", page)
