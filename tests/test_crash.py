"""kill -9 of a real `lms-webhooks run` process loses nothing, and redelivery keeps ids."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver, hang
from tests.conftest import ACCOUNT, API_KEY, SECRET
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


class RunProcess:
    """`python -m service run --config config/test.yaml`, as a deployment would start it."""

    def __init__(
        self,
        redis_url: str,
        lms_url: str,
        receiver_url: str,
        log: Path,
        config: str = "config/test.yaml",
    ) -> None:
        self.config = config
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "LMS_URL": lms_url,
            "RECEIVER_URL": receiver_url,
            "WEBHOOK_SECRET": SECRET,
            "STACKONE_API_KEY": API_KEY,
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "run", "--config", self.config],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(15)


@pytest.fixture
def run_process(
    redis_server: RedisServer,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> Iterator[RunProcess]:
    process = RunProcess(redis_server.url, lms[1], receiver[1], tmp_path / "run.log")
    yield process
    if process.process and process.process.poll() is None:
        process.process.kill()
        process.process.wait(10)


def seed(sim: SimLMS, count: int) -> None:
    for n in range(1, count + 1):
        sim.put_assignment(ACCOUNT, "u_1", {"id": f"a{n}"})
        sim.progress(ACCOUNT, "u_1", f"a{n}", 0)
    sim.add_user(ACCOUNT, "u_2")


async def wait_until(check: object, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while True:
            result = check() if callable(check) else None
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover


async def test_kill_between_commit_and_delivery(
    redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], run_process: RunProcess
) -> None:
    sim, _ = lms
    rx, _ = receiver
    seed(sim, 2)
    run_process.start()
    await wait_until(lambda: redis.hget(f"lw:user:{ACCOUNT}:u_1", "baselined"), 20, "baseline")

    rx.default_answer = hang(60)  # committed events go out, and never get their answer
    sim.progress(ACCOUNT, "u_1", "a1", 100)
    await wait_until(lambda: len({r.webhook_id for r in rx.received}) >= 2, 20, "attempts")
    run_process.kill()
    in_flight = {r.webhook_id for r in rx.received}
    assert await redis.zcard("lw:ep:hr:due") == 4  # updated, status, completed, progress

    rx.default_answer = Answer(status=200)
    run_process.start()  # the claims of the dead process run out; the events go again
    await rx.wait_for(4, 30)
    assert run_process.stop() == 0
    delivered = {e.webhook_id: e for e in rx.events}
    assert len(delivered) == 4 == len(rx.events)
    assert in_flight <= delivered.keys()  # redelivered with the webhook-id they first had
    assert {e.type for e in delivered.values()} == {
        ev.UPDATED,
        ev.STATUS_CHANGED,
        ev.COMPLETED,
        ev.PROGRESS_CHANGED,
    }
    assert await redis.zcard("lw:ep:hr:due") == 0
    log = run_process.log.read_text()
    assert "delivery_attempt" in log
    assert API_KEY not in log and SECRET not in log and SECRET[6:] not in log


async def test_kill_in_the_middle_of_a_poll(
    redis: Redis, lms: tuple[SimLMS, str], receiver: tuple[Receiver, str], run_process: RunProcess
) -> None:
    sim, _ = lms
    rx, _ = receiver
    seed(sim, 5)  # page_size 2 in config/test.yaml: 3 pages
    run_process.start()
    await wait_until(lambda: redis.hget(f"lw:user:{ACCOUNT}:u_1", "baselined"), 20, "baseline")

    sim.faults.page_delays = {1: 60.0}  # the second page of every listing hangs
    for n in range(1, 6):
        sim.progress(ACCOUNT, "u_1", f"a{n}", 30)
    sim.clear_requests()
    await wait_until(
        lambda: any("next" in r.query and r.user_id == "u_1" for r in sim.requests),
        20,
        "the poll reached page 2",
    )
    run_process.kill()
    assert rx.received == [] and await redis.zcard("lw:ep:hr:due") == 0  # nothing committed

    sim.faults.page_delays = {}
    run_process.start()  # u_1's lease runs out, then the poll runs again from the watermark
    await rx.wait_for(15, 40)  # 5 assignments × (updated, status_changed, progress_changed)
    await asyncio.sleep(1.0)
    assert run_process.stop() == 0
    assert len(rx.events) == 15 == len({e.webhook_id for e in rx.events})
    per_assignment = {e.data["assignment_id"] for e in rx.events}
    assert per_assignment == {f"a{n}" for n in range(1, 6)}


async def test_two_processes_share_the_endpoint_rate_and_send_each_event_once(
    redis_server: RedisServer,
    redis: Redis,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim, 25)
    processes = [
        RunProcess(redis_server.url, lms_url, rx_url, tmp_path / f"run{n}.log") for n in (1, 2)
    ]
    for process in processes:
        process.env["ENDPOINT_RATE"] = "5"
        process.start()
    try:
        await wait_until(lambda: redis.hget(f"lw:user:{ACCOUNT}:u_1", "baselined"), 20, "baseline")
        for n in range(1, 26):
            sim.update_assignment(ACCOUNT, "u_1", f"a{n}", x_round=1)  # 25 `updated` events
        await rx.wait_for(25, 30)
        await asyncio.sleep(1.0)
    finally:
        codes = [process.stop() for process in processes]
    assert codes == [0, 0]
    assert len(rx.received) == 25 == len({r.webhook_id for r in rx.received})
    times = sorted(r.received_at for r in rx.received)
    for n, start in enumerate(times):  # any 2 s window: at most 5/s x 2 s, +1 for the edge
        assert sum(1 for t in times[n:] if t < start + 2.0) <= 11
    logs = "".join(p.log.read_text() for p in processes)
    assert logs.count('"delivery_attempt"') == 25
