"""Delivery at production grade, end to end: breaker, Retry-After, rotation, SSRF guard.

Driven on a test clock: each step polls what is due and delivers what is due, so "nothing
was sent meanwhile" is proven by draining, not by waiting.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
from typing import NoReturn

import pytest
import structlog
from redis.asyncio import Redis
from standardwebhooks.webhooks import Webhook

from service.changes import events as ev
from service.delivery.breaker import BASE_COOLDOWN, THRESHOLD
from service.endpoint_health import EndpointHealth
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, ReceivedEvent, Receiver, hang
from service.store import keys
from service.store.claims import DeliveryMeta
from tests.helpers import (
    ACCOUNT,
    SECRET,
    Driven,
    driven,
    endpoint,
    make_settings,
    running,
    seed_user,
)
from tests.redis_server import RedisServer

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


def change_many(sim: SimLMS, user: str, count: int, round_: int) -> None:
    for n in range(1, count + 1):
        sim.update_assignment(ACCOUNT, user, f"{user}_a{n}", x_round=round_)  # one `updated` each


async def health(service: Driven) -> EndpointHealth:
    return await service.service.endpoint_store.health("hr")


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
    async with driven(settings, sim) as service:
        await service.baseline()
        change_many(sim, "u_1", 8, 1)
        await service.step(0.5)  # 8 events, sent one at a time: five failures pause it
        assert (await health(service)).status == "paused"
        assert len(rx.received) == THRESHOLD
        await service.step(BASE_COOLDOWN - 0.1)  # every retry is due, yet none is sent
        assert len(rx.received) == THRESHOLD
        rx.default_answer = Answer(status=200)
        await service.step(0.1)  # the cooldown is over: one probe, and on its 2xx the rest
        after = await health(service)
    assert after.status == "active" and after.consecutive_failures == 0
    assert len(rx.received) == THRESHOLD + 8
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
    async with driven(settings, sim) as service:
        await service.baseline()
        change_many(sim, "u_1", 3, 1)
        await service.step(0.5)  # three failures
        await service.step(0.4)  # their retries: six, so paused
        assert (await health(service)).status == "paused"
        await service.step(BASE_COOLDOWN)  # the probe fails, failing for over 1 s: disabled
        disabled = await health(service)
        assert disabled.status == "disabled"
        assert "disable_after" in (disabled.disabled_reason or "")
        attempts = len(rx.received)
        await service.step(BASE_COOLDOWN * 2)
        assert len(rx.received) == attempts  # disabled: nothing goes
        assert await service.service.queue.depth("hr") == 3  # the events wait

        rx.default_answer = Answer(status=200)
        await service.service.operations.enable_endpoint("hr")  # as POST .../enable does
        await service.step()
        assert await service.service.queue.depth("hr") == 0
    assert len({e.webhook_id for e in rx.events}) == 3 == len(rx.events)


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
    sent: list[tuple[str | None, float]] = []  # (event id, test clock) of each request
    async with driven(settings, sim) as service:

        def note(request: ReceivedEvent) -> None:
            sent.append((request.webhook_id, service.clock.now))

        rx.on_event = note
        await service.baseline()
        change_many(sim, "u_1", 2, 1)
        for _ in range(40):  # four seconds, a tenth at a time
            await service.step(0.1)
    assert sorted(e.data["assignment_id"] for e in rx.events) == ["u_1_a1", "u_1_a2"]
    by_id: dict[str, list[float]] = {}
    for event_id, at in sent:
        by_id.setdefault(event_id or "", []).append(at)
    for times in by_id.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if gaps:
            assert gaps[0] >= 0.99  # Retry-After: 1 beats the schedule's 100 ms
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
    async with driven(settings, sim) as service:
        await service.baseline()
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
        async with driven(settings, sim) as service:
            await service.baseline()  # each endpoint's first attempt is refused
            await service.step(0.15)  # and its one retry: then dead
            queue = service.service.queue
            dead = [await queue.dead_count(e) for e in ("literal", "by-name")]
            letters = await queue.dead_letters("by-name")
    assert dead == [1, 1]
    assert rx.received == []  # nothing was ever sent
    refused = [entry for entry in logs if entry["event"] == "delivery_address_refused"]
    assert {entry["endpoint"] for entry in refused} == {"literal", "by-name"}
    assert "allow_private_addresses" in (letters[0].last_error or "")


async def test_a_receiver_that_hangs_is_timed_out_and_the_event_retried(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    rx.responses.append(hang(30))
    settings = make_settings(
        redis_server.url, lms_url, [endpoint(rx_url, timeout="500ms", concurrency=1)], ["u_1"]
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", x_round=1)  # one `updated`
        started = time.monotonic()
        await service.step(0.5)  # its attempt hangs until the endpoint's timeout
        waited = time.monotonic() - started
        assert rx.events == [] and await service.service.queue.depth("hr") == 1
        [meta] = await redis.hvals(keys.EndpointKeys("hr").meta)
        assert "timed out after 0.5s" in meta
        await service.step(0.25)  # the retry
    assert 0.5 <= waited < 5  # 500 ms, and at most a tenth of it more: not the 30 s hang
    first, second = rx.received
    assert first.webhook_id == second.webhook_id and len(rx.events) == 1


async def test_a_stop_hands_back_what_is_in_flight_and_keeps_what_was_delivered(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """The running worker, stopped while a request hangs: the delivered event's ack is sent
    first (it is not handed back), the hanging one is handed back at once, due now, with no
    attempt counted (the stop's cancel is not taken for a timeout)."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    rx.responses.extend([Answer(), hang(30)])
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        polling={"emit_on_first_sync": True},
    )
    hr = keys.EndpointKeys("hr")
    async with running(settings) as service:
        async with asyncio.timeout(10):
            while len(rx.received) < 2:  # the first delivered, the second hanging
                await asyncio.sleep(0.02)
        await service.stop(timeout=0.3)
        left = await redis.zrange(hr.due, 0, -1, withscores=True)
        stopped_at = time.time()
    delivered, hanging = rx.received
    assert [event_id for event_id, _ in left] == [hanging.webhook_id]
    assert left[0][1] <= stopped_at * 1000  # due at once, not leased
    [meta] = await redis.hvals(hr.meta)
    assert DeliveryMeta.decode(meta).attempts == 0  # no attempt counted for it
    assert delivered.webhook_id not in {event_id for event_id, _ in left}


async def test_events_a_receiver_rejects_spend_their_own_retries_and_never_pause_it(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """A healthy endpoint that cannot handle six of thirty events (422): those six go through
    their retries to the dead letters on schedule, the other 24 are delivered, and the
    endpoint is never paused nor its failures counted."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 30)
    poison = {f"u_1_a{n}" for n in range(5, 31, 5)}
    rx.answer_for = lambda r: Answer(status=422) if r.data.get("assignment_id") in poison else None
    schedule = ["100ms"] * 3  # four attempts each
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        delivery={"retry_schedule": schedule},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        change_many(sim, "u_1", 30, 1)
        await service.step(0.5)  # 24 delivered, 6 rejected
        states = [await health(service)]
        for _ in schedule:  # each retry of the six, due 80-120 ms after the last
            await service.step(0.15)
            states.append(await health(service))
        queue = service.service.queue
        dead = await queue.dead_letters("hr", 10)
        depth = await queue.depth("hr")
    assert {(s.status, s.consecutive_failures, s.pauses) for s in states} == {("active", 0, 0)}
    assert sorted(d.event["data"]["assignment_id"] for d in dead) == sorted(poison)
    assert {d.last_error for d in dead} == {"HTTP 422"} and depth == 0
    assert len(rx.events) == 24 and len(rx.received) == 24 + 6 * (len(schedule) + 1)


async def test_a_4xx_neither_counts_toward_a_pause_nor_resets_the_failure_streak(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """503 ×4, 422, 503, one at a time: the 422 leaves the streak of four as it was, so the
    sixth answer is the fifth failure and pauses the endpoint."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 8)
    rx.responses.extend([Answer(status=503)] * 4 + [Answer(status=422), Answer(status=503)])
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        delivery={"retry_schedule": ["100ms"] * 20},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        change_many(sim, "u_1", 8, 1)
        await service.step(0.5)
        paused = await health(service)
    assert [r.status for r in rx.received] == [503] * 4 + [422, 503]
    assert paused.status == "paused" and paused.consecutive_failures == THRESHOLD
    assert paused.last_error == "HTTP 503"


async def test_a_probe_answered_4xx_lets_the_next_event_probe_at_once(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """The probe of a paused endpoint happens to be an event the receiver rejects: that says
    nothing of the endpoint, so it neither pauses it again nor holds the probe: the next due
    event probes in the same round, and on its 2xx the rest flow."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 6)
    rx.responses.extend([Answer(status=503)] * THRESHOLD)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        delivery={"retry_schedule": ["100ms"] * 20},
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        change_many(sim, "u_1", 6, 1)
        await service.step(0.5)
        assert (await health(service)).status == "paused"
        rx.responses.append(Answer(status=422))  # the probe's answer; then 200s
        await service.step(BASE_COOLDOWN)
        after = await health(service)
        assert after.status == "active" and after.consecutive_failures == 0
        assert len(rx.events) == 5  # all but the rejected one, whose retry is not due yet
        await service.step(0.15)
    assert [r.status for r in rx.received] == [503] * THRESHOLD + [422] + [200] * 6
    assert len({e.webhook_id for e in rx.events}) == 6 == len(rx.events)


@pytest.mark.parametrize(
    ("broken", "requests"),
    [
        ("webhook_headers", 0),  # signing fails: nothing is sent
        ("classify", 3),  # reading the answer fails: each attempt was sent, then crashed
    ],
)
async def test_a_bug_in_a_delivery_is_a_failed_attempt_and_dead_letters(
    redis_server: RedisServer,
    redis: Redis,
    lms: Sim,
    receiver: Rx,
    monkeypatch: pytest.MonkeyPatch,
    broken: str,
    requests: int,
) -> None:
    """An exception inside the send path counts as an attempt with its error recorded, so
    the event follows the schedule into the dead letters instead of coming back every lease
    period; the endpoint's breaker does not count our bug against it."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)

    def crash(*args: object, **kwargs: object) -> NoReturn:
        raise RuntimeError(f"injected bug in {broken}")

    monkeypatch.setattr(f"service.delivery.sender.{broken}", crash)
    schedule = ["100ms", "100ms"]
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url, concurrency=1)],
        ["u_1"],
        delivery={"retry_schedule": schedule},
    )
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()
            sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", x_round=1)  # one `updated`
            await service.step(0.5)
            [meta] = await redis.hvals(keys.EndpointKeys("hr").meta)
            first = DeliveryMeta.decode(meta)
            for _ in schedule:  # well within the claim's lease: only the schedule brings it back
                await service.step(0.15)
            queue = service.service.queue
            [dead] = await queue.dead_letters("hr")
            depth = await queue.depth("hr")
            after = await health(service)
    crashes = [entry for entry in logs if entry["event"] == "delivery_crashed"]
    assert len(crashes) == len(schedule) + 1  # each with its traceback (exc_info)
    assert first.attempts == 1 and first.last_status is None
    assert first.last_error == f"delivery crashed: RuntimeError: injected bug in {broken}"
    assert dead.attempts == len(schedule) + 1 and dead.last_error == first.last_error
    assert depth == 0 and len(rx.received) == requests
    assert after == EndpointHealth()  # untouched: not a failure of the endpoint
