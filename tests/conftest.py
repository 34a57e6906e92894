"""Fixtures: a real redis-server per session, the simulator and receivers over real HTTP."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis

from service.config import Settings, parse_settings
from service.sim.lms import SimLMS, start_sim_server
from service.sim.receiver import Receiver, start_receiver_server
from tests.redis_server import IN_CI, RedisServer, require_redis_server

SECRET = "whsec_" + base64.b64encode(b"lms-webhooks-test-secret-0123456789").decode()
API_KEY = "test_api_key_7f3a"
ACCOUNT = "acc_1"


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


def make_settings(
    redis_url: str,
    lms_url: str,
    endpoints: list[dict[str, Any]],
    users: list[str],
    **overrides: Any,
) -> Settings:
    """A fast test config: polls every 0.5 s, short retry schedule."""
    data: dict[str, Any] = {
        "redis_url": redis_url,
        "stackone": {"base_url": lms_url, "api_key": API_KEY, "page_size": 2},
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
