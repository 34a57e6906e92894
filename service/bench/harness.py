"""What every scenario runs on: a throwaway Redis, the simulator and a receiver in this process,
and the service as real `lms-webhooks run` processes whose CPU, memory and metrics are read
from outside, as an operator would read them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from service.sim.lms import SimLMS, start_sim_server
from service.sim.redis_server import RedisServer, free_port
from service.timefmt import parse_iso

API_KEY = "bench_key"
SECRET = "whsec_" + base64.b64encode(b"lms-webhooks-benchmark-secret!!!").decode()
TICKS = os.sysconf("SC_CLK_TCK")
SERVICE_COMMAND = (sys.executable, "-m", "service", "run")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_kb(pid: int, name: str = "VmRSS") -> int:
    """A /proc/<pid>/status memory line (VmRSS now, VmHWM the peak), in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise LookupError(name)


def metric_total(text: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples whose labels include `labels` (counters: the _total)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in (name, name + "_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


class ServiceProcess:
    """One `lms-webhooks run`, as a deployment starts it."""

    def __init__(self, config: dict[str, Any], workdir: Path, name: str, role: str = "all"):
        self.port = free_port()
        self.config = {**config, "http": {"listen": f"127.0.0.1:{self.port}"}}
        self.path = workdir / f"{name}.yaml"
        self.log = workdir / f"{name}.log"
        self.role = role
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.path.write_text(yaml.safe_dump(self.config))
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*SERVICE_COMMAND, "--config", str(self.path), "--role", self.role],
                stdout=out,
                stderr=out,
            )

    async def ready(self, session: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited; see {self.log}")
            try:
                async with session.get(f"http://127.0.0.1:{self.port}/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError(f"service not ready after {timeout}s; see {self.log}")

    async def metrics(self, session: aiohttp.ClientSession) -> str:
        async with session.get(f"http://127.0.0.1:{self.port}/metrics") as response:
            return await response.text()

    def kill(self) -> None:
        """kill -9: the process hands nothing back."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Received:
    """What the benchmark receiver saw: counts and, per event, change → arrival latency."""

    count: int = 0
    latencies: list[float] = field(default_factory=list)
    track_latency: bool = False
    delay: float = 0.0  # how long the receiver takes to answer, like a real HR system
    first_at: float | None = None
    last_at: float | None = None
    sample: str = ""  # one body as received, for a plain POST loop to send
    # per change (assignment id, its updated_at) → first arrival: a change fires several
    # events (updated, progress_changed...), and it counts once, when the first one arrives
    changes: dict[tuple[str, str], float] = field(default_factory=dict)
    track_changes: bool = False
    deliveries: Counter[str] = field(default_factory=Counter)  # webhook-id → times received


def _change_of(body: bytes) -> tuple[str, str] | None:
    """Which upstream change an event reports: (assignment id, the record's updated_at)."""
    data = json.loads(body).get("data") or {}
    updated = (data.get("assignment") or {}).get("updated_at")
    assignment_id = data.get("assignment_id")
    if isinstance(assignment_id, str) and isinstance(updated, str):
        return assignment_id, updated
    return None


def _latency_of(body: bytes, now: float) -> float | None:
    """Arrival time minus the record's `updated_at` (when the simulator made the change)."""
    data = json.loads(body)
    record = (data.get("data") or {}).get("assignment") or {}
    changed = parse_iso(record.get("updated_at"))
    return None if changed is None else now - changed.timestamp()


async def start_receiver(received: Received) -> tuple[web.AppRunner, str]:
    """A receiver that answers 204 at once: the delivery figures measure the sender."""

    async def hook(request: web.Request) -> web.Response:
        body = await request.read()
        if received.delay:
            await asyncio.sleep(received.delay)
        now = time.time()
        received.count += 1
        received.first_at = received.first_at or now
        received.last_at = now
        received.sample = received.sample or body.decode()
        if received.track_latency and request.headers.get("webhook-id"):
            latency = _latency_of(body, now)
            if latency is not None:
                received.latencies.append(latency)
        if received.track_changes:
            received.deliveries[request.headers.get("webhook-id", "")] += 1
            change = _change_of(body)
            if change is not None:
                received.changes.setdefault(change, now)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


@dataclass
class Bench:
    """One scenario's world; `service_config` builds a config pointing at it."""

    workdir: Path
    redis_server: RedisServer
    redis: Redis
    lms: SimLMS
    lms_url: str
    received: Received
    receiver_url: str
    session: aiohttp.ClientSession
    processes: list[ServiceProcess] = field(default_factory=list)

    def service_config(
        self,
        users: list[str],
        *,
        budget: int = 100_000,
        interval: str = "1s",
        poll_concurrency: int = 16,
        delivery_concurrency: int | None = 32,
        endpoint: bool = True,
        events: list[str] | None = None,
        emit_on_first_sync: bool = False,
    ) -> dict[str, Any]:
        """`delivery_concurrency` None: the endpoint's default; `events`: its subscription."""
        config: dict[str, Any] = {
            "redis_url": self.redis_server.url,
            "stackone": {
                "base_url": self.lms_url,
                "api_key": API_KEY,
                "max_requests_per_minute": budget,
            },
            "accounts": [{"account_id": "acc_1", "users": users}],
            "polling": {
                "interval": interval,
                "overlap": "5s",
                "concurrency": poll_concurrency,
                "emit_on_first_sync": emit_on_first_sync,
            },
            "endpoints": [],
            "delivery": {"allow_http": True, "allow_private_addresses": True},
            "log": {"level": "warning", "format": "json"},
        }
        if endpoint:
            hook: dict[str, Any] = {
                "id": "hr",
                "url": f"{self.receiver_url}/hooks",
                "secret": SECRET,
            }
            if delivery_concurrency is not None:
                hook |= {"concurrency": delivery_concurrency, "timeout": "10s"}
            if events is not None:
                hook["events"] = events
            config["endpoints"] = [hook]
        return config

    async def start_services(
        self, config: dict[str, Any], count: int = 1, role: str = "all"
    ) -> list[ServiceProcess]:
        started = []
        for _ in range(count):
            name = f"service-{len(self.processes) + 1}"
            process = ServiceProcess(config, self.workdir, name, role)
            process.start()
            self.processes.append(process)
            started.append(process)
        for process in started:
            await process.ready(self.session)
        return started

    def stop_services(self) -> None:
        for process in self.processes:
            process.stop()
        self.processes.clear()

    async def total(self, name: str, **labels: str) -> float:
        """A metric summed over every running service process."""
        texts = [await p.metrics(self.session) for p in self.processes]
        return sum(metric_total(text, name, **labels) for text in texts)


@contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lms-bench-") as tmp:
        yield Path(tmp)


@asynccontextmanager
async def _world(workdir: Path, session: aiohttp.ClientSession) -> AsyncIterator[Bench]:
    """A Redis, a simulator and a receiver of its own, torn down afterwards."""
    server = RedisServer(workdir / "redis")
    server.start()
    lms = SimLMS(api_key=API_KEY)
    received = Received()
    lms_runner, lms_url = await start_sim_server(lms)
    receiver_runner, receiver_url = await start_receiver(received)
    redis = Redis.from_url(server.url, decode_responses=True)
    bench = Bench(workdir, server, redis, lms, lms_url, received, receiver_url, session)
    try:
        yield bench
    finally:
        bench.stop_services()
        await redis.aclose()
        await receiver_runner.cleanup()
        await lms_runner.cleanup()
        server.stop()


def twin(bench: Bench) -> AbstractAsyncContextManager[Bench]:
    """A second world beside `bench` (its own Redis, simulator and receiver), so two
    configurations run side by side, at the same moments, on the same changes: what one
    sees the other sees, on the same loaded machine."""
    workdir = bench.workdir / "twin"
    workdir.mkdir()  # its services' configs and logs
    return _world(workdir, bench.session)


async def run_in_bench(scenario: Callable[[Bench], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Give `scenario` a fresh world and tear it all down afterwards, whatever happens."""
    with _workdir() as workdir:
        session = aiohttp.ClientSession()
        try:
            async with _world(workdir, session) as bench:
                return await scenario(bench)
        finally:
            await session.close()
