"""Fixtures: a real redis-server per session, the simulator and receivers over real HTTP,
Debian's Chromium for the console's browser tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path

import pytest
from redis.asyncio import Redis

from service.sim.lms import SimLMS, start_sim_server
from service.sim.receiver import Receiver, start_receiver_server
from tests.browser import CHROMIUM, require_chromium
from tests.helpers import API_KEY, SECRET, RunProcess
from tests.redis_server import IN_CI, RedisServer, require_redis_server
from tests.webhook_schemas import raw_body_problem


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    missing = require_redis_server()
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true and {missing}")
        pytest.skip(missing)
    server = RedisServer(Path(tmp_path_factory.mktemp("redis")))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def delivered_bodies_follow_the_catalog(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """Every body a test's receiver takes as signed by the service validates against its
    event type's JSON Schema in /openapi.json (the `webhooks` receivers import). Tests of
    the receiver itself, which sign bodies of their own, are marked `any_webhook_body`."""
    if request.node.get_closest_marker("any_webhook_body"):
        yield
        return
    problems: list[str] = []
    verify = Receiver.verify

    def verify_and_check(self: Receiver, raw: bytes, headers: Mapping[str, str]) -> str | None:
        reason = verify(self, raw, headers)
        if reason is None and (problem := raw_body_problem(raw)) is not None:
            problems.append(problem)
        return reason

    monkeypatch.setattr(Receiver, "verify", verify_and_check)
    yield
    assert problems == [], "delivered bodies that are not what /openapi.json says"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The browser's path, or the test fails (CI) or skips (elsewhere) saying what is missing."""
    missing = require_chromium()
    if missing:
        if IN_CI:
            pytest.fail(f"CI=true and {missing}")
        pytest.skip(missing)
    return CHROMIUM


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    redis_server.flush()
    client = Redis.from_url(redis_server.url, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def lms() -> AsyncIterator[tuple[SimLMS, str]]:
    sim = SimLMS(api_key=API_KEY)
    runner, url = await start_sim_server(sim)
    yield sim, url
    await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[Receiver, str]]:
    rx = Receiver([SECRET])
    runner, url = await start_receiver_server(rx)
    yield rx, url
    await runner.cleanup()


@pytest.fixture
def run_process(
    redis_server: RedisServer,
    lms: tuple[SimLMS, str],
    receiver: tuple[Receiver, str],
    tmp_path: Path,
) -> Iterator[RunProcess]:
    """`lms-webhooks run` on config/test.yaml, against this test's Redis, LMS and receiver."""
    process = RunProcess(redis_server.url, lms[1], receiver[1], tmp_path / "run.log")
    yield process
    process.ensure_stopped()
