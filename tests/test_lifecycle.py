"""Graceful shutdown and Redis going away, with real processes."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest
from redis.asyncio import Redis

from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver
from tests.helpers import ACCOUNT, RunProcess, baselined, queue_drained, seed, wait_until
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow


async def readyz(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def test_sigterm_exits_zero_in_time_and_loses_nothing(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 6)
    process = RunProcess(redis_server.url, lms_url, rx_url, tmp_path / "run.log")
    process.start()
    await wait_until(lambda: baselined(redis, "u_1"), 20, "baseline")
    rx.default_answer = Answer(delay=1.5)  # deliveries are in flight when the signal comes
    sim.faults.delay_seconds = 0.5  # and so are polls
    for n in range(1, 7):
        sim.update_assignment(ACCOUNT, "u_1", f"a{n}", x_round=1)  # 6 `updated` events
    await wait_until(lambda: len(rx.received) >= 1, 20, "first delivery in flight")
    assert process.process is not None
    stopping = time.monotonic()
    process.process.send_signal(signal.SIGTERM)
    code = process.process.wait(20)
    assert code == 0 and time.monotonic() - stopping < 15

    rx.default_answer = Answer()
    sim.faults.delay_seconds = 0
    process.start()
    await rx.wait_for(lambda es: len({e.webhook_id for e in es}) >= 6, 30)
    await queue_drained(redis)  # nothing else is on its way
    assert process.stop() == 0
    delivered = {e.webhook_id for e in rx.events}
    assert len(delivered) == 6  # every event, once acknowledged
    assert {r.webhook_id for r in rx.received} == delivered  # a redelivery kept its id


async def test_redis_away_for_a_few_seconds(
    lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 3)
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    port = free_port()
    process = RunProcess(server.url, lms_url, rx_url, tmp_path / "run.log")
    process.env["HTTP_PORT"] = str(port)
    url = f"http://127.0.0.1:{port}"
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        process.start()
        await wait_until(lambda: baselined(client, "u_1"), 20, "baseline")
        sim.progress(ACCOUNT, "u_1", "a1", 50)  # 3 events flowing
        await rx.wait_for(1, 10)
        server.stop()  # SIGTERM: an AOF-backed Redis shutting down, as on a restart
        await asyncio.sleep(1.0)
        assert await readyz(url) == 503
        sim.progress(ACCOUNT, "u_1", "a2", 50)  # changes made while Redis is away
        await asyncio.sleep(2.0)
        assert process.process is not None and process.process.poll() is None  # still running
        server.start()

        async def ready() -> bool:
            return await readyz(url) == 200

        await wait_until(ready, 20, "ready again")
        # both changes: updated, status_changed, progress_changed. A poll that Redis left
        # holding its lease is taken up again once the lease runs out (15 s)
        await rx.wait_for(lambda es: len({e.webhook_id for e in es}) >= 6, 40)
        async with Redis.from_url(server.url, decode_responses=True) as after:
            await queue_drained(after)  # nothing else is on its way
        code = process.stop()
    finally:
        process.ensure_stopped()
        await client.aclose()
        server.stop()
    assert code == 0
    assert len({e.webhook_id for e in rx.events}) == 6  # nothing lost (a repeat keeps its id)
    assert {e.data["assignment_id"] for e in rx.events} == {"a1", "a2"}
