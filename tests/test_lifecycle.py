"""Graceful shutdown and Redis going away, with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from structlog.testing import capture_logs

from service.changes import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver
from service.store import keys
from service.store.scripts import LEASED
from tests.helpers import (
    ACCOUNT,
    RunProcess,
    baselined,
    driven,
    endpoint,
    make_settings,
    queue_drained,
    running,
    seed,
    wait_until,
)
from tests.redis_server import RedisServer, free_port

pytestmark = pytest.mark.slow


async def readyz(url: str) -> int | None:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{url}/readyz") as response:
            return response.status
    except aiohttp.ClientError:
        return None


async def test_a_stop_lets_a_claim_under_way_end_and_hands_back_what_it_claimed(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A stop that comes while the scheduler's tick waits for Redis to answer its claim:
    the claim ends (its users handed back at once, none left leased to run out) instead of
    being cancelled, which lost the answer and was logged as a crashed job."""
    sim, lms_url = lms
    seed(sim, 1)
    settings = make_settings(redis_server.url, lms_url, [endpoint(receiver[1])], ["u_1", "u_2"])
    async with running(settings) as service:
        scheduler = service.scheduler
        assert scheduler is not None
        claim = scheduler.leases.claim
        inside, answered = asyncio.Event(), asyncio.Event()

        async def slow_claim(*args: Any) -> Any:  # Redis answering slowly
            inside.set()
            await answered.wait()
            return await claim(*args)

        monkeypatch.setattr(scheduler.leases, "claim", slow_claim)
        await asyncio.wait_for(inside.wait(), 10)
        stopping = asyncio.create_task(scheduler.stop(timeout=2.0))
        await wait_until(lambda: not scheduler.accepting, 5, "the stop under way")
        answered.set()
        await stopping
        assert "raised an exception" not in caplog.text
        assert await redis.zcount(keys.POLL_DUE, LEASED, "+inf") == 0  # handed back


async def test_a_sigterm_while_starting_exits_zero_and_starts_nothing(
    redis: Redis, lms: tuple[SimLMS, str], run_process: RunProcess, tmp_path: Path
) -> None:
    """A supervisor stopping a replica it has just started: the signal comes while the
    process is still starting (here: reading its config from a pipe, so the moment is
    certain), and it exits 0 once it can act, starting nothing, instead of dying by it."""
    sim, _ = lms
    seed(sim, 1)
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    run_process.config = str(fifo)
    run_process.start()
    writer = await _open_for_writing(fifo)  # the process reads it: it is starting
    assert run_process.process is not None
    run_process.process.send_signal(signal.SIGTERM)
    text = await asyncio.to_thread(Path("config/test.yaml").read_bytes)
    with os.fdopen(writer, "wb") as config:
        config.write(text)
    assert run_process.stop() == 0
    assert "SIGTERM while starting" in run_process.log.read_text()
    assert await redis.dbsize() == 0  # nothing started: no user scheduled, no lease taken
    assert sim.requests == []


async def _open_for_writing(fifo: Path) -> int:
    """The pipe's write end, once a reader has it open (before that, opening fails)."""
    for _ in range(400):
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: nobody reads it yet
            await asyncio.sleep(0.05)
    raise AssertionError(f"nobody opened {fifo} to read it")


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
        # both changes: updated, status_changed, progress_changed. A poll that Redis cut off
        # releases its lease once Redis answers again (or it runs out, 15 s, if that fails)
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


async def test_a_poll_cut_off_by_redis_releases_its_lease_once_redis_is_back(
    lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], tmp_path: Path
) -> None:
    """A poll whose commit finds Redis gone does not leave its lease to run out (15 s, the
    user's next poll as late): it is released, the failure counted, as soon as Redis
    answers again, and the next poll finds the change."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 1)
    server = RedisServer(tmp_path / "redis", appendonly=True)
    server.start()
    settings = make_settings(server.url, lms_url, [endpoint(rx_url)], ["u_1"])
    member = keys.user_member(ACCOUNT, "u_1")
    client = Redis.from_url(server.url, decode_responses=True)
    try:
        with capture_logs() as logs:
            async with driven(settings, sim) as driver:
                await driver.baseline()
                sim.progress(ACCOUNT, "u_1", "a1", 50)
                sim.faults.delay_seconds = 0.5  # Redis goes while the poll reads upstream

                async def leased() -> bool:  # claimed: scored as a lease, not as a due time
                    return (await client.zscore(keys.POLL_DUE, member) or 0) >= LEASED

                driver.clock.advance(0.5)
                polling = asyncio.create_task(driver.poll())
                await wait_until(leased, 5, "u_1's poll under way")
                server.stop()  # SIGTERM: the AOF keeps the lease
                metrics = driver.service.metrics
                failed = 'lms_webhooks_poll_failures_total{reason="error"} 1.0'
                await wait_until(lambda: failed in metrics.render().decode(), 5, "the poll failed")
                server.start()
                assert await polling == 1
                await client.connection_pool.disconnect()  # its connections went with the server
                # released (due again in half a second, the failure counted), not leased for 15 s
                assert await client.zscore(keys.POLL_DUE, member) == int(
                    (driver.clock.now + 0.5) * 1000
                )
                # the failure is put down to Redis being unreachable, in the user's state and
                # the log; the text varies with the moment the poll met the stopped server
                # ("Connection closed by server.", "Error 111 connecting to …"): the class
                # is checked, and of the text only that it says so
                state = await client.hgetall(keys.user_state(ACCOUNT, "u_1"))
                assert state["failures"] == "1" and "connect" in state["last_error"].lower()
                failures = [e for e in logs if e["event"] == "poll_failed"]
                assert [e["error_type"] for e in failures] == [RedisConnectionError.__name__]
                sim.faults.delay_seconds = 0.0
                await driver.step(0.5)
    finally:
        await client.aclose()
        server.stop()
    assert sorted(e.type for e in rx.events) == [
        ev.PROGRESS_CHANGED,
        ev.STATUS_CHANGED,
        ev.UPDATED,
    ]
