"""Delivery at production grade, end to end: breaker, Retry-After, rotation, SSRF guard."""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from typing import Any

import structlog
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from service import events as ev
from service.delivery.breaker import BASE_COOLDOWN, THRESHOLD
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver
from tests.conftest import ACCOUNT, SECRET, endpoint, make_settings
from tests.redis_server import RedisServer
from tests.test_e2e import baseline_taken, running, seed_user

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


def change_many(sim: SimLMS, user: str, count: int, round_: int) -> None:
    for n in range(1, count + 1):
        sim.update_assignment(ACCOUNT, user, f"{user}_a{n}", x_round=round_)  # one `updated` each


async def test_breaker_pauses_probes_and_resumes(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 8)
    rx.default_answer = Answer(status=503)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        delivery={"retry_schedule": ["100ms"] * 20},
    )
    async with running(settings) as service:
        await baseline_taken(redis, "u_1")
        change_many(sim, "u_1", 8, 1)
        async with asyncio.timeout(10):
            while (await service.endpoint_store.health("hr")).status != "paused":
                await asyncio.sleep(0.02)
        paused_at = time.time()
        assert len(rx.received) == THRESHOLD
        await asyncio.sleep(BASE_COOLDOWN - 1.0)
        assert len(rx.received) == THRESHOLD  # paused: not hammered
        rx.default_answer = Answer(status=200)
        await rx.wait_for(8, BASE_COOLDOWN + 10)  # the probe succeeds, the rest follows
        health = await service.endpoint_store.health("hr")
    probe = rx.received[THRESHOLD]
    assert probe.received_at - paused_at >= BASE_COOLDOWN - 0.3
    assert health.status == "active" and health.consecutive_failures == 0
    assert len({e.webhook_id for e in rx.events}) == 8


async def test_disable_after_and_enable_resumes_what_waited(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)
    rx.default_answer = Answer(status=500)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        delivery={"retry_schedule": ["300ms"] * 10, "disable_after": "1s"},
    )
    async with running(settings) as service:
        await baseline_taken(redis, "u_1")
        change_many(sim, "u_1", 3, 1)
        async with asyncio.timeout(10):
            while (await service.endpoint_store.health("hr")).status != "disabled":
                await asyncio.sleep(0.02)
        health = await service.endpoint_store.health("hr")
        assert "disable_after" in (health.disabled_reason or "")
        await asyncio.sleep(0.5)
        attempts = len(rx.received)
        await asyncio.sleep(1.0)
        assert len(rx.received) == attempts  # disabled: nothing goes
        assert await service.queue.depth("hr") == 3  # the events wait

        rx.default_answer = Answer(status=200)
        await service.endpoint_store.update("hr", lambda h: h.__class__())  # as /enable does
        service.dispatcher.wake({"hr"})  # type: ignore[union-attr]
        await rx.wait_for(3, 10)
        assert await service.queue.depth("hr") == 0


async def test_receiver_down_then_up_with_retry_after(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    rx.responses.extend([Answer(status=503, headers={"Retry-After": "1"})] * 2)
    rx.responses.extend([Answer(status=503)] * 2)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        delivery={"retry_schedule": ["100ms", "200ms", "400ms", "800ms"]},
    )
    async with running(settings):
        await baseline_taken(redis, "u_1")
        change_many(sim, "u_1", 2, 1)
        await rx.wait_for(2, 15)
        await asyncio.sleep(0.5)
    assert sorted(e.data["assignment_id"] for e in rx.events) == ["u_1_a1", "u_1_a2"]
    by_id: dict[str, list[float]] = {}
    for request in rx.received:
        by_id.setdefault(request.webhook_id or "", []).append(request.received_at)
    for times in by_id.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if gaps:
            assert gaps[0] >= 0.95  # Retry-After: 1 beats the schedule's 100 ms
    assert len(rx.received) == 6 and len(rx.events) == 2  # 4 failures, then each once


async def test_two_secrets_give_two_signatures_each_verifying(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    new_secret = "whsec_" + base64.b64encode(b"the-next-secret-after-rotation!!").decode()
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, secret=[SECRET, new_secret])],
        ["u_1"],
        polling={"emit_on_first_sync": True},
    )
    async with running(settings):
        await rx.wait_for(1, 10)
    [event] = rx.events
    assert len((event.signature or "").split(" ")) == 2
    headers = {k.lower(): v for k, v in event.headers.items()}
    for secret in (SECRET, new_secret):
        assert Webhook(secret).verify(event.raw, headers)["type"] == ev.CREATED


async def test_private_addresses_are_refused_unless_allowed(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    by_name = rx_url.replace("127.0.0.1", "localhost")  # a name resolving to loopback
    endpoints = [endpoint(rx_url, "literal"), endpoint(by_name, "by-name")]
    settings = make_settings(
        redis_server.url,
        lms_url,
        endpoints,
        ["u_1"],
        polling={"emit_on_first_sync": True},
        delivery={"allow_private_addresses": False, "retry_schedule": ["100ms"]},
    )
    with structlog.testing.capture_logs() as logs:
        async with running(settings) as service:
            async with asyncio.timeout(10):
                while sum([await service.queue.dead_count(e) for e in ("literal", "by-name")]) < 2:
                    await asyncio.sleep(0.05)
            letters: list[dict[str, Any]] = await service.queue.dead_letters("by-name")
    assert rx.received == []  # nothing was ever sent
    refused = [entry for entry in logs if entry["event"] == "delivery_address_refused"]
    assert {entry["endpoint"] for entry in refused} == {"literal", "by-name"}
    assert "allow_private_addresses" in letters[0]["last_error"]
