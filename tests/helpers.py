"""What the tests share: a driven (burst-mode) service on a clock the test moves, a running
service, seeding the simulator, and `lms-webhooks run` as a real process."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from random import Random
from typing import Any

from pydantic import BaseModel
from redis.asyncio import Redis

from service.app import Service
from service.config import Settings, parse_settings
from service.sim.lms import SimLMS, start_sim_server
from service.sim.receiver import Answer, ReceivedEvent, Receiver
from service.store import keys
from service.store.leases import LEASE_SECONDS
from service.store.scripts import LEASED

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_" + base64.b64encode(b"lms-webhooks-test-secret-0123456789").decode()
API_KEY = "test_api_key_7f3a"
ACCOUNT = "acc_1"


def make_settings(
    redis_url: str,
    lms_url: str,
    endpoints: list[dict[str, Any]],
    users: list[str],
    **overrides: Any,
) -> Settings:
    """A fast test config: polls every 0.5 s, short retry schedule, and a key budget the
    test's cadences fit (the shared limiter runs on Redis' real clock: a small budget would
    hold a test up in real time; tests of the budget give their own)."""
    data: dict[str, Any] = {
        "redis_url": redis_url,
        "stackone": {
            "base_url": lms_url,
            "api_key": API_KEY,
            "page_size": 2,
            "max_requests_per_minute": 60_000,
        },
        "accounts": [{"account_id": ACCOUNT, "users": users}],
        "polling": {"interval": "500ms", "overlap": "5s"},
        "endpoints": endpoints,
        "delivery": {
            "retry_schedule": ["200ms", "200ms"],
            "allow_http": True,
            "allow_private_addresses": True,
        },
        "http": {"listen": "127.0.0.1:0"},
        "log": {"level": "debug", "format": "json"},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section] = {**data[section], **values}
        else:
            data[section] = values
    return parse_settings(data)


def endpoint(url: str, endpoint_id: str = "hr", **extra: Any) -> dict[str, Any]:
    return {"id": endpoint_id, "url": f"{url}/hooks", "secret": SECRET, "timeout": "2s", **extra}


class Clock:
    """A clock that moves only when told to (it starts at the real time)."""

    def __init__(self, start: float | None = None) -> None:
        self.now = time.time() if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Driven:
    """A service in burst mode: nothing happens until the test polls or delivers.

    The test clock drives due times, retries, the breaker's cooldowns and the simulator's
    timestamps. What Redis times on its own clock does not move with it: leases (a claim
    holds until its work ends it, or for its length in real time), the shared rates (GCRA),
    a Retry-After pause of the upstream key, and the probe lock of a paused endpoint (its
    TTL is the claim's lease, about 7 s in these tests)."""

    service: Service
    clock: Clock

    async def poll(self) -> int:
        """Every listing, feed and user due now read, passed due dates reported; returns
        how many reads ran."""
        await self.service.refresh_plan()
        return sum([await s.run_once() for s in self.service.schedulers()])

    async def deliver(self) -> None:
        """Every event due now delivered (and retried, while a retry is due) and settled."""
        assert self.service.dispatcher is not None
        await self.service.dispatcher.drain()

    async def baseline(self) -> None:
        """One interval on: every tracked user's first poll is due (they are spread over
        the interval; feeds and listings are due at once), polled, and what it sent
        delivered."""
        for scheduler in self.service.schedulers():
            await scheduler.sync_users()
        await self.step(self.service.settings.polling.interval)

    async def step(self, seconds: float = 0.0) -> None:
        """Move the clock on, then poll and deliver what is due."""
        self.clock.advance(seconds)
        await self.poll()
        await self.deliver()


@asynccontextmanager
async def driven(
    settings: Settings, sim: SimLMS | None = None, *, http: bool = False
) -> AsyncIterator[Driven]:
    """The service in burst mode on a test clock, which the simulator shares when given;
    `http`: its HTTP API served too."""
    clock = Clock()
    if sim is not None:
        sim.clock = clock
    service = Service(settings, clock=clock, background=False, serve_http=http, rng=Random(7))
    await service.start()
    try:
        yield Driven(service, clock)
    finally:
        await service.stop(timeout=2.0)


@asynccontextmanager
async def two_processes(settings: Settings, clock: Clock) -> AsyncIterator[tuple[Service, Service]]:
    """Two services on one Redis, in burst mode, on one clock."""
    one, two = (Service(settings, clock=clock, background=False, serve_http=False) for _ in "12")
    await one.start()
    await two.start()
    try:
        yield one, two
    finally:
        await one.stop(timeout=2.0)
        await two.stop(timeout=2.0)


class WhileAnswering(SimLMS):
    """An upstream where, while a request of `account` to a path ending in `path` is in
    flight (its answer made, not yet sent), `meanwhile` runs once: what another process
    does during a read."""

    account = ""
    path = ""
    meanwhile: Callable[[], Awaitable[None]] | None = None

    async def while_answering(self, path: str) -> None:
        if self.meanwhile is not None and self.in_flight[self.account] and path.endswith(self.path):
            meanwhile, self.meanwhile = self.meanwhile, None
            await meanwhile()


@asynccontextmanager
async def served(sim: SimLMS) -> AsyncIterator[str]:
    """A simulator of the test's own (a subclass that misbehaves) served over HTTP: its URL."""
    runner, url = await start_sim_server(sim)
    try:
        yield url
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    """The service as it runs for real, in this process, on the real clock."""
    service = Service(settings)
    await service.start()
    try:
        yield service
    finally:
        await service.stop(timeout=2.0)


def as_json(answer: BaseModel | list[Any] | None) -> Any:
    """What Operations answers as the admin API serves it (None and lists as they are)."""
    if isinstance(answer, list):
        return [as_json(item) for item in answer]
    return None if answer is None else answer.model_dump(mode="json")


def seed_user(sim: SimLMS, user: str, count: int) -> None:
    """`count` assignments (`{user}_a1`, …), each not started."""
    for n in range(1, count + 1):
        sim.put_assignment(ACCOUNT, user, {"id": f"{user}_a{n}"})
        sim.progress(ACCOUNT, user, f"{user}_a{n}", 0)


def of_type(events: list[ReceivedEvent], kind: str) -> list[ReceivedEvent]:
    return [e for e in events if e.type == kind]


async def baselined(redis: Redis, user: str) -> bool:
    return await redis.hget(keys.user_state(ACCOUNT, user), "baselined") == "1"


async def wait_until(check: object, timeout: float, what: str) -> None:
    """Until `check()` (maybe a coroutine) is true; AssertionError naming `what` after
    `timeout`. For real processes, which the test cannot drive."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                result = check() if callable(check) else None
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for {what} after {timeout}s") from None


async def baseline_taken(redis: Redis, user: str, timeout: float = 5.0) -> None:
    """Wait until a running service has taken the user's baseline."""
    await wait_until(lambda: baselined(redis, user), timeout, f"{user}'s baseline")


async def queue_drained(redis: Redis, endpoint_id: str = "hr", timeout: float = 15.0) -> None:
    """Until a running process has nothing left to send to the endpoint: its queue is empty,
    every event acknowledged. A receiver may count an event before the service does (its
    2xx on the way back, an answer the service timed out): such an event is still queued
    and is sent again, same id. Waiting for the queue, not the receiver, proves that nothing
    else will arrive."""

    async def empty() -> bool:
        return await redis.zcard(keys.EndpointKeys(endpoint_id).due) == 0

    await wait_until(empty, timeout, f"{endpoint_id}'s queue to drain")


async def redis_ms(redis: Redis) -> int:
    """Now on Redis' clock (epoch ms), which leases run on."""
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def leases_run_out(redis: Redis) -> None:
    """What time would do to a killed process's claims, at once: every user and event being
    worked on (scored as a lease) is due now. Each lease must run out within its length on
    Redis' clock (LEASE_SECONDS, a poll's and an event claim's alike), so a claim that would
    never run out by itself fails here.
    Only for a dead process: a live one would just lose its leases."""
    now_ms = await redis_ms(redis)
    queues = [key async for key in redis.scan_iter(match=keys.ENDPOINT_QUEUES)]
    bounds = dict.fromkeys([keys.POLL_DUE, *queues], LEASE_SECONDS)
    for zset, seconds in bounds.items():
        leased = await redis.zrangebyscore(zset, LEASED, "+inf", withscores=True)
        too_far = [(m, s) for m, s in leased if s > LEASED + now_ms + (seconds + 1) * 1000]
        assert not too_far, f"{zset}: leased beyond any lease: {too_far}"
        if leased:
            await redis.zadd(zset, {member: now_ms for member, _ in leased}, xx=True)


RESTARTED = "/restarted"


def answer_only_the_restarted(rx: Receiver, process: RunProcess) -> None:
    """After `process` was killed with webhooks hanging at `rx`: the next start of `process`
    sends to another path, whose requests `rx` answers 200, while everything else keeps
    hanging. A request the killed process wrote just before it died can reach the receiver
    after the kill, and a receiver answering 200 by then would count it delivered (a real
    receiver would: at-least-once, same webhook-id). Telling the two processes apart by
    path keeps "each event exactly once" a statement about the restarted process only."""
    process.env["RECEIVER_URL"] += RESTARTED
    rx.answer_for = lambda event: Answer(200) if event.path.startswith(RESTARTED) else None


def seed(sim: SimLMS, count: int) -> None:
    """u_1 of config/test.yaml with assignments a1…a`count` (not started), u_2 with none."""
    for n in range(1, count + 1):
        sim.put_assignment(ACCOUNT, "u_1", {"id": f"a{n}"})
        sim.progress(ACCOUNT, "u_1", f"a{n}", 0)
    sim.add_user(ACCOUNT, "u_2")


def _default_signals() -> None:
    """The signals a supervisor sends with their default action, as a supervisor starts the
    process: a suite run under nohup (or in the background) hands its children SIGHUP
    ignored, which would hide what the service does with it."""
    for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)


class RunProcess:
    """`python -m service run --config config/test.yaml --role all`, as a deployment would
    start it."""

    def __init__(
        self,
        redis_url: str,
        lms_url: str,
        receiver_url: str,
        log: Path,
        config: str = "config/test.yaml",
        role: str = "all",
    ) -> None:
        self.config = config
        self.role = role
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
            command = [sys.executable, "-m", "service", "run", "--config", self.config]
            self.process = subprocess.Popen(
                [*command, "--role", self.role],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=out,
                preexec_fn=_default_signals,
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

    def ensure_stopped(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class Processes(list[RunProcess]):
    """Service processes started together by `run_processes`; `codes` once they stopped."""

    codes: list[int]

    def logs(self) -> str:
        return "".join(process.log.read_text() for process in self)


@contextmanager
def run_processes(
    redis_url: str,
    lms_url: str,
    receiver_url: str,
    logs: Path,
    count: int = 1,
    *,
    config: str = "config/test.yaml",
    **env: str,
) -> Iterator[Processes]:
    """`count` service processes on one config (with `env` added), each logging to
    `logs`/run<n>.log; stopped with SIGTERM when the block ends, their exit codes in
    `codes`."""
    group = Processes(
        RunProcess(redis_url, lms_url, receiver_url, logs / f"run{n}.log", config)
        for n in range(1, count + 1)
    )
    for process in group:
        process.env |= env
        process.start()
    try:
        yield group
    finally:
        group.codes = [process.stop() for process in group]
