"""Redis under pressure: an HTTP flood beside the workers, Redis out of memory, a failover
under Sentinel, and Redis absent when the service starts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from redis.asyncio import Redis
from redis.exceptions import OutOfMemoryError

from service.api.capacity import capped
from service.sim.lms import SimLMS
from service.sim.receiver import ReceivedEvent, Receiver
from service.store import keys
from service.store.connect import connect_workers, worker_connections
from tests.helpers import (
    ACCOUNT,
    API_KEY,
    RunProcess,
    baseline_taken,
    driven,
    endpoint,
    make_settings,
    queue_drained,
    running,
    seed_user,
    wait_until,
)
from tests.redis_server import RedisServer, free_port

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


def troubles(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
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
    # a budget the cadences fit: no warning but those the flood would cause
    budget = {"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 6000}
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], users, stackone=budget)
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
    # no worker's call failed (a Redis error is logged with its `error`). A machine this
    # busy (a flood, and maybe another suite beside) can still stall the event loop past a
    # lease's renewal: a claim or lease lost so is fenced and taken again, and every change
    # still arrives (above); that is not what this test is about
    assert [e for e in troubles(logs) if "error" in e] == []
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
    inside: list[str] = []  # the requests being answered, by path

    async def slow(request: web.Request) -> web.Response:
        inside.append(request.path)
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
            await wait_until(lambda: inside.count("/slow") == 2, 10, "both slots taken")
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


async def test_the_workers_wait_for_a_free_connection_instead_of_failing(
    redis_server: RedisServer,
) -> None:
    """More Redis commands at once than the workers' pool has connections (a burst of
    polls and deliveries): each waits for a connection and runs; none fails at once with
    "Too many connections" (redis-py's default pool), which would cost its poll or delivery."""
    settings = make_settings(redis_server.url, "http://127.0.0.1:1", [], ["u_1"])
    size = worker_connections(settings)
    workers = connect_workers(settings)
    try:
        # each holds its connection 0.2 s: the last of them waits for one to come free
        replies = await asyncio.gather(
            *(workers.blpop(["test:never-pushed"], 0.2) for _ in range(size + 10))
        )
    finally:
        await workers.aclose()
    assert replies == [None] * (size + 10)


async def wait_for_baseline(redis: Redis, user: str) -> None:
    await baseline_taken(redis, user, 10)


@pytest.mark.usefixtures("redis_server")  # skipped without redis-server, failed under CI
async def test_redis_out_of_memory_is_reported_the_queue_drains_and_all_recovers(
    lms: Sim, receiver: Rx, tmp_path: Path
) -> None:
    """`maxmemory` with `noeviction`, reached while events wait: readiness says so (one log
    line for the episode, a metric), the queue still drains (claims and acks go through),
    and once that freed enough memory, polls go on by themselves."""
    sim, lms_url = lms
    rx, rx_url = receiver
    server = RedisServer(tmp_path / "redis")  # its own: this one's memory limit is changed
    server.start()
    redis = Redis.from_url(server.url, decode_responses=True)
    settings = make_settings(
        server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        http={"admin_token": "t0ken-oom"},
        # 10 pages a poll every 500 ms fit this budget: the plan keeps the interval
        stackone={"base_url": lms_url, "api_key": API_KEY, "max_requests_per_minute": 6000},
    )
    bulky = "x" * 4000  # each event carries the record twice: 20 changes ≈ 0.5 MB queued
    for n in range(1, 21):
        sim.put_assignment(ACCOUNT, "u_1", {"id": f"a{n}", "description": bulky})
    try:
        with structlog.testing.capture_logs() as logs:
            async with driven(settings, sim, http=True) as d, aiohttp.ClientSession() as http:
                d.service.operations.redis_check.seconds = 0  # every request checks anew
                url = d.service.http_url
                await d.baseline()
                for n in range(1, 21):
                    sim.progress(ACCOUNT, "u_1", f"a{n}", 50)
                d.clock.advance(settings.polling.interval)
                await d.poll()  # queued, not delivered yet
                queued = await redis.zcard(keys.EndpointKeys("hr").due)
                assert queued == 60  # updated, status_changed, progress_changed each

                used = int((await redis.info("memory"))["used_memory"])
                await redis.config_set("maxmemory-policy", "noeviction")
                await redis.config_set("maxmemory", used - 100_000)
                with pytest.raises(OutOfMemoryError):
                    await redis.set("anything", "1")

                for _ in range(3):  # checked three times, logged once
                    async with http.get(f"{url}/readyz") as response:
                        assert response.status == 503
                        assert (await response.json())["checks"]["redis"] == "out of memory"
                assert "lms_webhooks_redis_oom 1.0" in await text(http, f"{url}/metrics")
                track = http.post(
                    f"{url}/admin/users",
                    json={"account_id": ACCOUNT, "user_id": "u_9"},
                    headers={"Authorization": "Bearer t0ken-oom"},
                )
                async with track as response:  # an admin write says why it failed
                    assert response.status == 503
                    assert (await response.json())["error"] == "store out of memory"
                sim.progress(ACCOUNT, "u_1", "a1", 100)  # a change Redis cannot take now
                d.clock.advance(settings.polling.interval)
                assert await d.poll() == 0  # no poll can claim its user

                await asyncio.wait_for(d.deliver(), 20)  # claims and acks go through
                assert len({e.webhook_id for e in rx.events}) == queued
                assert await redis.zcard(keys.EndpointKeys("hr").due) == 0

                # the bodies sent and acknowledged freed the memory: ready again, alone
                async with http.get(f"{url}/readyz") as response:
                    assert response.status == 200
                assert "lms_webhooks_redis_oom 0.0" in await text(http, f"{url}/metrics")
                await d.step(settings.polling.interval)  # the change made meanwhile
                completed = [e for e in rx.events if e.type == "assignment.completed"]
                assert [e.data["assignment_id"] for e in completed] == ["a1"]
    finally:
        await redis.aclose()
        server.stop()
    episodes = [e for e in logs if e["event"] in ("redis_not_ready", "redis_ready")]
    assert [(e["event"], e.get("reason", e.get("was"))) for e in episodes] == [
        ("redis_not_ready", "out of memory"),
        ("redis_ready", "out of memory"),
    ]
    refused = [e for e in logs if "maxmemory" in str(e.get("error"))]
    assert {e["event"] for e in refused} >= {"claim_users_failed"}  # a poll's claim failed
    assert [e for e in refused if e["log_level"] != "debug"] == []  # each at debug level


async def text(http: aiohttp.ClientSession, url: str) -> str:
    async with http.get(url) as response:
        return await response.text()


@pytest.mark.slow
@pytest.mark.usefixtures("redis_server")  # skipped without redis-server, failed under CI
async def test_a_redis_absent_at_start_is_waited_for(
    lms: Sim, receiver: Rx, tmp_path: Path
) -> None:
    """`lms-webhooks run` with nothing listening at the Redis URL: it starts, is not ready,
    and once Redis comes up it works (it waited rather than exiting)."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    server = RedisServer(tmp_path / "redis")  # its port chosen, nothing listening there yet
    process = RunProcess(server.url, lms_url, rx_url, tmp_path / "run.log")
    port = free_port()
    process.env["HTTP_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}"
    try:
        process.start()
        async with aiohttp.ClientSession() as http:

            async def unreachable() -> bool:
                try:
                    async with http.get(f"{url}/readyz") as response:
                        body = await response.json()
                        return response.status == 503 and body["checks"]["redis"] == "unreachable"
                except aiohttp.ClientError:
                    return False  # not listening yet

            await wait_until(unreachable, 20, "/readyz: Redis unreachable")
            server.start()

            async def ready() -> bool:
                async with http.get(f"{url}/readyz") as response:
                    return response.status == 200

            await wait_until(ready, 10, "/readyz: ready")
        async with Redis.from_url(server.url, decode_responses=True) as client:
            await baseline_taken(client, "u_1", 10)
            sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
            await rx.wait_for(lambda es: any(e.type == "assignment.completed" for e in es), 10)
        assert process.stop() == 0
    finally:
        process.ensure_stopped()
        server.stop()
