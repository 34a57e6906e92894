"""Redis under pressure: an HTTP flood beside the workers, Redis out of memory, a failover
under Sentinel, and Redis absent when the service starts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from redis.asyncio import Redis

from service.api.capacity import capped
from service.sim.lms import SimLMS
from service.sim.receiver import ReceivedEvent, Receiver
from tests.helpers import (
    ACCOUNT,
    baseline_taken,
    driven,
    endpoint,
    make_settings,
    queue_drained,
    running,
    seed_user,
)
from tests.redis_server import RedisServer

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


def troubles(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Log lines of a warning or worse."""
    return [e for e in logs if e.get("log_level") in ("warning", "error", "critical")]


async def test_an_http_flood_never_starves_the_workers(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """Unauthenticated /readyz and /metrics, hundreds at a time, while users are polled and
    events delivered: the workers see no Redis error and /readyz stays 200."""
    sim, lms_url = lms
    rx, rx_url = receiver
    users = [f"u_{n}" for n in range(1, 9)]
    for user in users:
        seed_user(sim, user, 2)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], users)
    statuses: dict[str, Counter[int]] = {"/readyz": Counter(), "/metrics": Counter()}
    with structlog.testing.capture_logs() as logs:
        async with running(settings) as service:
            assert service.http_url is not None
            for user in users:  # every user baselined: polls from now on find changes
                await wait_for_baseline(redis, user)
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(connector=connector) as http:
                in_flight = asyncio.Semaphore(400)

                async def probe(path: str) -> None:
                    async with in_flight, http.get(f"{service.http_url}{path}") as response:
                        await response.read()
                        statuses[path][response.status] += 1

                started = time.monotonic()
                flood = [probe("/readyz" if n % 2 else "/metrics") for n in range(1500)]
                for round_ in range(3):  # changes to poll and deliver while the flood runs
                    for user in users:
                        sim.progress(ACCOUNT, user, f"{user}_a1", 10 * (round_ + 1))
                    await asyncio.gather(*flood[round_ * 500 : (round_ + 1) * 500])
                flooded = time.monotonic() - started
            # each user's last change, made during the flood, arrives (a poll may have seen
            # two rounds as one change)
            await rx.wait_for(lambda es: reached(es, 30) == set(users), 20)
            await queue_drained(redis)
    assert statuses["/readyz"] == {200: 750}, statuses
    assert set(statuses["/metrics"]) <= {200, 503}, statuses  # 503: busy, try again
    assert statuses["/metrics"][200] > 0
    assert troubles(logs) == []
    assert flooded < 30


def reached(events: list[ReceivedEvent], progress: float) -> set[str]:
    """The users of whom an event showed an assignment at `progress`."""
    return {e.data["user_id"] for e in events if e.data["assignment"]["progress"] == progress}


async def test_readiness_and_gauges_read_redis_once_a_second_whatever_the_requests(
    redis_server: RedisServer, redis: Redis, lms: Sim
) -> None:
    """Hundreds of /readyz and /metrics at once cost Redis a few commands: one readiness
    check and one gauge refresh, shared by every request (burst mode: nothing else runs)."""
    _, lms_url = lms
    settings = make_settings(redis_server.url, lms_url, [endpoint("http://127.0.0.1:9")], [])
    async with driven(settings, http=True) as d, aiohttp.ClientSession() as http:
        url = d.service.http_url

        async def get(path: str) -> int:
            async with http.get(f"{url}{path}") as response:
                await response.read()
                return response.status

        before = await commands_processed(redis)
        answers = await asyncio.gather(*(get(p) for p in ["/readyz", "/metrics"] * 150))
        spent = await commands_processed(redis) - before - 1  # INFO itself
    assert set(answers) <= {200, 503} and answers[::2] == [200] * 150
    # one readiness check and one gauge refresh (a second each, should the second turn)
    assert spent <= 2 * (1 + 20), spent


async def commands_processed(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_commands_processed"])


async def test_beyond_the_cap_a_request_is_answered_busy_at_once() -> None:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    app = web.Application(middlewares=[capped(limit=2, wait=0.05)])
    app.router.add_get("/slow", slow)
    app.router.add_get("/readyz", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:
            held = [asyncio.create_task(http.get(f"http://127.0.0.1:{port}/slow")) for _ in "ab"]
            probe = asyncio.create_task(http.get(f"http://127.0.0.1:{port}/readyz"))
            await asyncio.sleep(0.05)  # both slots taken
            started = time.monotonic()
            async with http.get(f"http://127.0.0.1:{port}/slow") as busy:
                assert busy.status == 503 and time.monotonic() - started < 1
                assert busy.headers["Retry-After"] == "1"
                assert (await busy.json())["error"] == "busy"
            assert not probe.done()  # a probe is not capped: it runs beside the two
            release.set()
            for response in await asyncio.gather(*held, probe):
                assert response.status == 200
                response.release()
    finally:
        await runner.cleanup()


async def wait_for_baseline(redis: Redis, user: str) -> None:
    await baseline_taken(redis, user, 10)
