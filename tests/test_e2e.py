"""End to end, in process: real redis-server, the simulator and a receiver over real HTTP.

Most tests drive the service in burst mode on a test clock (poll what is due, deliver what
is due), so "nothing else arrives" is proven by draining, not by waiting.
"""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
import structlog
from redis.asyncio import Redis

from service.changes import events as ev
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver, hang, start_receiver_server
from service.timefmt import iso_ms, parse_iso
from tests.helpers import (
    ACCOUNT,
    SECRET,
    baseline_taken,
    driven,
    endpoint,
    make_settings,
    of_type,
    running,
    seed_user,
    wait_until,
)
from tests.redis_server import RedisServer

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


async def test_every_event_type_fires_when_it_should(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        polling={"full_resync_interval": "1s"},
    )
    async with driven(settings, sim) as service:
        seed_user(sim, "u_1", 3)
        await service.baseline()
        assert rx.received == []  # the baseline sends nothing (emit_on_first_sync: false)

        before = sim.get_assignment(ACCOUNT, "u_1", "u_1_a1")
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 40)
        await service.step(0.5)
        assert [e.type for e in rx.events].count(ev.PROGRESS_CHANGED) == 1
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        assert len(of_type(rx.events, ev.COMPLETED)) == 1
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a2", due_date="2027-03-01T00:00:00.000Z")
        await service.step(0.5)
        assert len(of_type(rx.events, ev.DUE_DATE_CHANGED)) == 1
        sim.put_assignment(ACCOUNT, "u_1", {"id": "u_1_new", "x_custom": {"kept": 1}})
        await service.step(0.5)
        assert len(of_type(rx.events, ev.CREATED)) == 1
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a3")  # updated_at alone: nothing
        sim.delete_assignment(ACCOUNT, "u_1", "u_1_a2")
        await service.step(1.0)  # a full resync is due: it finds the removal
        await service.step(1.0)  # and a second one finds nothing more

    events = rx.events
    assert all(e.verified for e in rx.received)
    assert len({e.webhook_id for e in events}) == len(events)  # once each
    assert all(e.webhook_id == e.body["id"] for e in events if e.body)
    assert not [e for e in events if e.data.get("assignment_id") == "u_1_a3"]

    a1 = [e for e in events if e.data["assignment_id"] == "u_1_a1"]
    assert sorted(e.type for e in a1 if e.data["sequence"] == 2) == sorted(
        [ev.UPDATED, ev.STATUS_CHANGED, ev.PROGRESS_CHANGED]
    )
    assert sorted(e.type for e in a1 if e.data["sequence"] == 3) == sorted(
        [ev.UPDATED, ev.STATUS_CHANGED, ev.COMPLETED, ev.PROGRESS_CHANGED]
    )
    first = of_type(a1, ev.PROGRESS_CHANGED)[0].data
    assert first["previous"] == before
    assert first["assignment"]["progress"] == 40
    assert first["changed_fields"] == ["progress", "status"]
    completed = of_type(events, ev.COMPLETED)[0].data
    assert completed["assignment"]["status"]["value"] == "completed"
    assert completed["previous"]["status"]["value"] == "in_progress"

    [created] = of_type(events, ev.CREATED)
    assert created.data["sequence"] == 1 and created.data["previous"] is None
    assert created.data["assignment"]["x_custom"] == {"kept": 1}  # unknown fields pass through
    [due] = of_type(events, ev.DUE_DATE_CHANGED)
    assert due.data["changed_fields"] == ["due_date"]
    [removed] = of_type(events, ev.REMOVED)
    assert removed.data["assignment_id"] == "u_1_a2"
    assert removed.data["sequence"] == 3 and removed.data["assignment"] is None
    assert removed.data["previous"]["due_date"] == "2027-03-01T00:00:00.000Z"
    assert {e.headers.get("Content-Type") for e in events} == {"application/json"}
    assert all((e.user_agent or "").startswith("lms-webhooks/") for e in events)


async def test_emit_on_first_sync_and_endpoint_filters(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.progress(ACCOUNT, "u_1", "u_1_a2", 100)
    endpoints = [
        endpoint(rx_url),
        endpoint(rx_url, "completions-only", events=[ev.COMPLETED]),
        endpoint(rx_url, "other-account", accounts=["acc_other"]),
    ]
    settings = make_settings(
        redis_server.url, lms_url, endpoints, ["u_1"], polling={"emit_on_first_sync": True}
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        await service.step(0.5)  # the next poll finds nothing new
    paths = [(e.type, e.data["assignment_id"]) for e in rx.events]
    # `hr` gets created ×2 + completed; `completions-only` the completion; `other-account` none
    assert sorted(paths) == sorted(
        [
            (ev.CREATED, "u_1_a1"),
            (ev.CREATED, "u_1_a2"),
            (ev.COMPLETED, "u_1_a2"),
            (ev.COMPLETED, "u_1_a2"),
        ]
    )


async def test_failed_delivery_is_retried_with_the_same_id(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url, concurrency=1)], ["u_1"])
    async with driven(settings, sim) as service:
        await service.baseline()
        rx.responses.extend([Answer(status=500), Answer(status=502)])
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", due_date="2027-01-01T00:00:00.000Z")
        await service.step(0.5)  # updated + due_date_changed: the first two attempts fail
        assert [r.status for r in rx.received] == [500, 502] and rx.events == []
        await service.step(0.25)  # their retries are due (200 ms ±20%)
    attempts: dict[str, list[int]] = {}
    for request in rx.received:
        attempts.setdefault(request.webhook_id or "", []).append(request.status)
    assert sorted(attempts.values()) == [[500, 200], [502, 200]]
    assert len(rx.events) == 2


async def test_gone_disables_the_endpoint_and_holds_its_events(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    rx.default_answer = Answer(status=410)
    seed_user(sim, "u_1", 1)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url, concurrency=1)], ["u_1"])
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", due_date="2027-01-01T00:00:00.000Z")
        await service.step(0.5)
        await service.step(5.0)  # long after: still nothing goes
        health = await service.service.endpoint_store.health("hr")
        depth = await service.service.queue.depth("hr")
    assert health.status == "disabled" and health.disabled_reason == "410 Gone"
    assert len(rx.received) == 1  # not hammered after the 410
    assert depth == 2  # updated + due_date_changed, held for when it is enabled again


async def test_spent_schedule_dead_letters_with_the_last_error(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    rx.default_answer = Answer(status=500)
    seed_user(sim, "u_1", 1)
    settings = make_settings(
        redis_server.url, lms_url, [endpoint(rx_url, events=[ev.UPDATED])], ["u_1"]
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", due_date="2027-01-01T00:00:00.000Z")
        await service.step(0.5)
        sent = [r.received_at for r in rx.received]
        await service.step(0.25)  # the first retry
        await service.step(0.25)  # the second and last: then dead
        queue = service.service.queue
        [letter] = await queue.dead_letters("hr")
        depth = await queue.depth("hr")
    assert depth == 0 and len(sent) == 1
    assert letter.attempts == 3  # the first attempt and the schedule's two retries
    assert letter.last_status == 500 and "500" in (letter.last_error or "")
    assert letter.event["type"] == ev.UPDATED
    assert [r.webhook_id for r in rx.received] == [letter.event_id] * 3


async def test_upstream_retry_after_pauses_requests(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 1)
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"])
    async with driven(settings) as service:
        await service.baseline()
        sim.faults.forced.append({"status": 429, "retry_after": "1"})
        sim.clear_requests()
        await service.step(0.5)  # the 429 pauses the key (on Redis' clock); then the retry
    times = [r.time for r in sim.requests]
    assert [r.status for r in sim.requests] == [429, 200]
    assert times[1] - times[0] >= 0.95  # the whole key paused for Retry-After


@pytest.mark.parametrize(
    ("fault", "failed_polls"),
    [({"malformed_json": True}, 4), ({"wrong_shape": True}, 4), ({"status": 500}, 1)],
)
async def test_bad_upstream_pages_are_logged_and_retried(
    redis_server: RedisServer,
    redis: Redis,
    lms: Sim,
    receiver: Rx,
    fault: dict[str, Any],
    failed_polls: int,
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)  # page_size 2: two pages
    settings = make_settings(redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"])
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()
            # the next four requests fail: a malformed page fails its poll at once, a 5xx is
            # retried by the client (four attempts) before the poll fails
            sim.faults.forced.extend([fault] * 4)  # type: ignore[list-item]
            sim.progress(ACCOUNT, "u_1", "u_1_a3", 50)
            for _ in range(5):  # a failed poll is due again after min(interval, 5 s)
                await service.step(0.5)
    failures = [entry for entry in logs if entry["event"] == "poll_failed"]
    assert len(failures) == failed_polls and failures[0]["user_id"] == "u_1"
    assert len(of_type(rx.events, ev.PROGRESS_CHANGED)) == 1


async def test_record_without_id_is_counted_and_skipped(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        polling={"emit_on_first_sync": True},
    )
    sim.faults.forced.append({"missing_id": True})
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()  # it skips the record
            await service.step(0.5)  # it comes back with its id on the next poll
            metrics = service.service.metrics.render().decode()
    skipped = [entry for entry in logs if entry["event"] == "records_skipped"]
    assert skipped and skipped[0]["count"] == 1 and skipped[0]["reason"] == "missing_id"
    assert 'lms_webhooks_records_skipped_total{reason="missing_id"} 1.0' in metrics
    # the record came back with its id on the next poll: both assignments were created
    assert sorted(e.data["assignment_id"] for e in of_type(rx.events, ev.CREATED)) == [
        "u_1_a1",
        "u_1_a2",
    ]


async def test_health_ready_and_metrics(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    settings = make_settings(
        redis_server.url,
        lms_url,
        [endpoint(rx_url)],
        ["u_1"],
        polling={"emit_on_first_sync": True},
    )
    async with running(settings) as service, aiohttp.ClientSession() as http:
        await rx.wait_for(1, 10)

        async def acked() -> bool:  # a few milliseconds after the 2xx: acks go in batches
            return await service.queue.depth("hr") == 0

        await wait_until(acked, 5, "the ack")
        async with http.get(f"{service.http_url}/healthz") as response:
            assert response.status == 200
        async with http.get(f"{service.http_url}/readyz") as response:
            assert response.status == 200
            assert (await response.json())["checks"] == {
                "redis": True,
                "poller": True,
                "dispatcher": True,
            }
        async with http.get(f"{service.http_url}/metrics") as response:
            text = await response.text()
    for line in (
        'lms_webhooks_upstream_requests_total{status="200"}',
        'lms_webhooks_events_total{type="assignment.created"} 1.0',
        'lms_webhooks_deliveries_total{endpoint="hr",outcome="success"} 1.0',
        'lms_webhooks_queue_depth{endpoint="hr"} 0.0',
        'lms_webhooks_dead_letters{endpoint="hr"} 0.0',
        "lms_webhooks_poll_duration_seconds_count",
        'lms_webhooks_delivery_latency_seconds_count{endpoint="hr"} 1.0',
        'lms_webhooks_endpoint_state{endpoint="hr",state="active"} 1.0',
        'lms_webhooks_endpoint_state{endpoint="hr",state="disabled"} 0.0',
        'lms_webhooks_endpoint_consecutive_failures{endpoint="hr"} 0.0',
        'lms_webhooks_queue_oldest_age_seconds{endpoint="hr"} 0.0',
        "lms_webhooks_accounts_backed_off 0.0",
    ):
        assert line in text, line
    lag = float(text.split("\nlms_webhooks_poll_lag_seconds ")[1].split()[0])
    assert 0 <= lag < 5  # polls are on time (a 0.5 s interval)


async def test_readyz_fails_while_redis_is_unreachable(lms: Sim) -> None:
    _, lms_url = lms
    settings = make_settings("redis://127.0.0.1:1/0", lms_url, [], ["u_1"])
    async with running(settings) as service, aiohttp.ClientSession() as http:
        await asyncio.sleep(0.6)  # a few scheduler ticks fail against the missing Redis
        async with http.get(f"{service.http_url}/readyz") as response:
            assert response.status == 503
            assert (await response.json())["checks"]["redis"] == "unreachable"
        async with http.get(f"{service.http_url}/healthz") as response:
            assert response.status == 200


async def test_a_hanging_endpoint_does_not_stall_another(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    healthy, healthy_url = receiver
    stuck = Receiver([SECRET])
    stuck.default_answer = hang(30)
    stuck_runner, stuck_url = await start_receiver_server(stuck)
    seed_user(sim, "u_1", 1)
    endpoints = [
        endpoint(stuck_url, "stuck", timeout="10s", concurrency=1),
        endpoint(healthy_url, "healthy"),
    ]
    settings = make_settings(redis_server.url, lms_url, endpoints, ["u_1"])
    try:
        async with running(settings):
            await baseline_taken(redis, "u_1")
            for progress in (10, 20, 30):
                changed_at = time.time()
                sim.progress(ACCOUNT, "u_1", "u_1_a1", progress)
                await healthy.wait_for(
                    lambda es, p=progress: any(e.data["assignment"]["progress"] == p for e in es),
                    5,
                )
                # one poll interval (0.5 s) and delivery: the stuck endpoint adds nothing
                assert time.time() - changed_at < 3.0
    finally:
        await stuck_runner.cleanup()
    assert len(stuck.received) == 1  # its single slot is still waiting on the first event
    # incremental polls read from the watermark minus the overlap
    incremental = [r for r in sim.requests if "filter[updated_after]" in r.query]
    assert incremental and all(r.query["filter[updated_after]"].endswith("Z") for r in incremental)


@pytest.mark.parametrize(
    ("completed_first", "same_updated_at", "kept"),
    [
        (False, False, "completed"),  # the later update wins...
        (True, False, "completed"),  # ...wherever it is listed
        (False, True, "completed"),  # a tie: the one listed last
        (True, True, "pending"),
    ],
)
async def test_an_id_listed_twice_in_one_read_is_one_version(
    redis_server: RedisServer,
    redis: Redis,
    lms: Sim,
    receiver: Rx,
    completed_first: bool,
    same_updated_at: bool,
    kept: str,
) -> None:
    """Two records with one id (one pending, one completed) made every poll detect two
    changes: a new `assignment.completed` with a new webhook-id every poll, forever. Pages
    hold 2 records here, so the two versions are on different pages of one read."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)
    records = sim.accounts[ACCOUNT]["u_1"]
    pending = records.pop("u_1_a1")
    later = parse_iso(pending["updated_at"]) + timedelta(seconds=0 if same_updated_at else 1)
    done = {
        **pending,
        "status": {"value": "completed", "source_value": "Completed"},
        "progress": 100,
        "updated_at": iso_ms(later),
    }
    # the simulator lists its dict's values: two keys can hold one id
    first, last = (done, pending) if completed_first else (pending, done)
    sim.accounts[ACCOUNT]["u_1"] = {"v1": first, **records, "v2": last}
    settings = make_settings(
        redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"], polling={"emit_on_first_sync": True}
    )
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()
            seen = [e for e in rx.events if e.data["assignment_id"] == "u_1_a1"]
            for _ in range(4):
                await service.step(0.5)
            polls = len(sim.requests)
            metrics = service.service.metrics.render().decode()
    events = [e for e in rx.events if e.data["assignment_id"] == "u_1_a1"]
    assert events == seen  # nothing more after the baseline: one version, every read
    created = of_type(events, ev.CREATED)
    assert len(created) == 1 and created[0].data["assignment"]["status"]["value"] == kept
    assert len(of_type(events, ev.COMPLETED)) == (kept == "completed")
    duplicates = [e for e in logs if e["event"] == "records_skipped"]
    assert {(e["reason"], e["count"]) for e in duplicates} == {("duplicate_id", 1)}
    assert len(duplicates) == polls // 2  # one per read, of two pages each
    assert f'lms_webhooks_records_skipped_total{{reason="duplicate_id"}} {polls // 2}.0' in metrics


async def test_records_that_cannot_be_stored_exactly_are_skipped_not_polled_forever(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """`progress: NaN` was stored as null (a change on every poll, forever); an id with a
    lone surrogate raised in event_id on every poll, so none of the user's other changes
    were committed again. Both are skipped and counted; the rest flows."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    records = sim.accounts[ACCOUNT]["u_1"]
    records["nan"] = {**records["u_1_a1"], "id": "u_1_nan", "progress": float("nan")}
    records["inf"] = {**records["u_1_a1"], "id": "u_1_inf", "progress": float("inf")}
    records["bad"] = {**records["u_1_a1"], "id": "bad\ud800x"}  # sent as a \\ud800 escape
    settings = make_settings(
        redis_server.url, lms_url, [endpoint(rx_url)], ["u_1"], polling={"emit_on_first_sync": True}
    )
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()
            for _ in range(3):
                await service.step(0.5)
            sim.progress(ACCOUNT, "u_1", "u_1_a1", 40)
            await service.step(0.5)
            reads = len(sim.requests) // 2  # four records, two a page
    assert {e.data["assignment_id"] for e in rx.events} == {"u_1_a1"}
    assert len(of_type(rx.events, ev.CREATED)) == 1
    assert len(of_type(rx.events, ev.PROGRESS_CHANGED)) == 1
    assert not [e for e in logs if e["event"] == "poll_crashed"]
    skipped = [e for e in logs if e["event"] == "records_skipped"]
    assert skipped and {e["reason"] for e in skipped} == {"invalid_record"}
    assert sum(e["count"] for e in skipped) == 3 * reads
