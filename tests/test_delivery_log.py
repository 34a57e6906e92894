"""The delivery log on a real redis-server, driven in burst mode: every attempt recorded
(status or error, the answer's first 1 KiB, the next attempt), events found after delivery
with their bodies, outcome filters, pages that neither repeat nor skip, retention and the
per-endpoint cap, test sends, redelivery."""

from __future__ import annotations

import json
from typing import Any

import pytest
from redis.asyncio import Redis

from service.changes import events as ev
from service.changes.outbox import EventHead
from service.delivery import signing
from service.errors import InvalidInput, NotFound
from service.operations import Operations
from service.sim.lms import SimLMS
from service.sim.receiver import Answer, Receiver
from service.store import keys, log_body
from service.store import log as delivery_log
from service.store.log_policy import DEFAULT_LOG
from service.store.scripts import log_head
from tests.helpers import ACCOUNT, SECRET, as_json, driven, endpoint, make_settings, seed_user
from tests.redis_server import RedisServer, free_port

Sim = tuple[SimLMS, str]
Rx = tuple[Receiver, str]


def settings_for(redis_server: RedisServer, lms_url: str, hooks: list[dict[str, Any]], **over: Any):  # type: ignore[no-untyped-def]
    over.setdefault("polling", {})
    over["polling"] = {"emit_on_first_sync": True, **over["polling"]}
    return make_settings(redis_server.url, lms_url, hooks, ["u_1", "u_2"], **over)


async def as_sent(redis: Redis, event_id: str) -> str | None:
    """The logged event's body as the log gives it back: the text signed and sent."""
    return await delivery_log.DeliveryLog(redis, DEFAULT_LOG, []).body_as_sent(event_id)


async def every_page(ops: Operations, limit: int = 50, **filters: Any) -> list[dict[str, Any]]:
    """Every item of a listing, following its cursors."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        page = as_json(await ops.events(limit=limit, cursor=cursor, **filters))
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the cursors never ended")


async def test_every_attempt_is_recorded_with_its_answer_and_next_time(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    sim.add_user(ACCOUNT, "u_2")
    # 1024 bytes, the last character cut in two: the log keeps text, the cut one replaced
    long_body = "<b>" + "é" * 1000
    answers = iter([Answer(status=500, body=long_body), Answer(status=200, body="thanks")])
    rx.answer_for = lambda _event: next(answers)
    closed = free_port()  # nobody listens: no answer at all
    settings = settings_for(
        redis_server,
        lms_url,
        [endpoint(rx_url), endpoint(f"http://127.0.0.1:{closed}", "down")],
        delivery={"retry_schedule": ["10s", "10s"]},
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()  # u_1_a1 created: hr answers 500, down does not answer
        started = service.clock.now
        await service.step(12)  # the retries: hr 200, down again nothing
        await service.step(12)  # down's third attempt: dead
        [summary] = (as_json(await ops.events()))["items"]
        event = as_json(await ops.event(summary["id"]))
        recent = as_json(await ops.endpoint_attempts("hr"))
    assert event is not None
    assert summary["endpoints"] == {
        "hr": {"outcome": "delivered", "attempts": 2},
        "down": {"outcome": "dead", "attempts": 3},
    }
    assert event["type"] == ev.CREATED and event["user_id"] == "u_1"
    assert event["assignment_id"] == "u_1_a1" and event["account_id"] == ACCOUNT
    first, second = event["attempts"]["hr"]
    assert (first["attempt"], first["status"], first["error"]) == (1, 500, "HTTP 500")
    assert len(first["response_body"].encode()) <= 1024 + 2  # U+FFFD for the cut byte
    assert first["response_body"].startswith("<b>éé") and first["response_body"][-1] == "\ufffd"
    assert first["response_truncated"] is True
    assert first["started_at_ms"] <= int(started * 1000)
    # the next attempt as scheduled: 10 s ±20% after the attempt
    assert 8_000 <= first["next_attempt_at_ms"] - first["started_at_ms"] <= 12_100
    assert first["duration_ms"] >= 0
    assert (second["attempt"], second["status"], second["error"]) == (2, 200, None)
    assert (second["response_body"], second["response_truncated"]) == ("thanks", False)
    assert second["next_attempt_at_ms"] is None
    down = event["attempts"]["down"]
    assert [a["attempt"] for a in down] == [1, 2, 3]
    assert all(a["status"] is None and a["response_body"] is None for a in down)
    assert all("Connect" in a["error"] for a in down)  # refused: aiohttp's connector error
    assert down[-1]["next_attempt_at_ms"] is None  # dead-lettered after it
    # the endpoint's recent attempts, newest first, each naming its event
    assert [(a["event_id"], a["type"], a["status"]) for a in recent] == [
        (summary["id"], ev.CREATED, 200),
        (summary["id"], ev.CREATED, 500),
    ]


async def test_an_event_is_found_by_user_after_delivery_with_its_body(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 3)
    seed_user(sim, "u_2", 2)
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url), endpoint(rx_url, "crm")])
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        assert await service.service.queue.depth("hr") == 0  # delivered: the queue let go
        found = await every_page(ops, user_id="u_2")
        detail = as_json(await ops.event(found[0]["id"]))
        by_assignment = await every_page(ops, assignment_id="u_1_a2")
        nothing = await every_page(ops, user_id="u_3")
    assert {(e["user_id"], e["assignment_id"]) for e in found} == {
        ("u_2", "u_2_a1"),
        ("u_2", "u_2_a2"),
    }
    assert [e["assignment_id"] for e in by_assignment] == ["u_1_a2"] and nothing == []
    assert detail is not None
    [received] = [e for e in rx.events if e.webhook_id == detail["id"]][:1]
    assert detail["body"] == json.loads(received.raw)
    # the bytes as sent, once per event however many endpoints it went to
    stored = await as_sent(redis, detail["id"])
    assert stored is not None and stored.encode() == received.raw
    assert await redis.zcard(keys.LOG_EVENTS) == 5
    assert detail["endpoints"] == {
        "hr": {"outcome": "delivered", "attempts": 1},
        "crm": {"outcome": "delivered", "attempts": 1},
    }


async def test_outcome_filters(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.add_user(ACCOUNT, "u_2")
    # crm rejects what it gets (a 4xx: those events' own retries only)
    rx.answer_for = lambda e: Answer(status=422) if e.path.startswith("/crm") else None
    crm = {**endpoint(rx_url, "crm"), "url": f"{rx_url}/crm"}
    settings = settings_for(
        redis_server,
        lms_url,
        [endpoint(rx_url), crm],
        delivery={"retry_schedule": ["1s"]},
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        for scheduler in service.service.schedulers():
            await scheduler.sync_users()
        service.clock.advance(settings.polling.interval)
        await service.poll()  # committed, not delivered yet
        queued = await every_page(ops, outcome="queued")
        await service.deliver()
        await service.step(1.5)  # crm's retries: dead
        dead = await every_page(ops, outcome="dead")
        dead_at_hr = await every_page(ops, outcome="dead", endpoint="hr")
        delivered_at_hr = await every_page(ops, outcome="delivered", endpoint="hr")
        still_queued = await every_page(ops, outcome="queued")
        with pytest.raises(InvalidInput):
            as_json(await ops.events(outcome="lost"))
    assert len(queued) == 2
    assert (
        {e["id"] for e in dead} == {e["id"] for e in queued} == {e["id"] for e in delivered_at_hr}
    )
    assert dead_at_hr == [] and still_queued == []
    assert all(e["endpoints"]["crm"] == {"outcome": "dead", "attempts": 2} for e in dead)


async def test_pages_neither_repeat_nor_skip_while_events_keep_coming(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 12)  # one poll: twelve events logged at the same instant
    seed_user(sim, "u_2", 5)
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url)])
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        before = await every_page(ops)
        assert len(before) == 17
        seen: list[str] = []
        page = as_json(await ops.events(limit=4))
        seen += [e["id"] for e in page["items"]]
        for round_ in range(1, 10):  # newer events are logged between the pages
            for n in (1, 2):
                sim.update_assignment(ACCOUNT, "u_2", f"u_2_a{n}", x_round=round_)
            await service.step(1)
            if page["next_cursor"] is None:
                break
            page = as_json(await ops.events(limit=4, cursor=page["next_cursor"]))
            seen += [e["id"] for e in page["items"]]
        else:
            raise AssertionError("17 events in pages of 4 took more than 10 pages")
        newer = await every_page(ops, limit=500)
    assert seen == [e["id"] for e in before]  # newest first, each once, none missing
    assert len(newer) == 17 + 2 * 5  # the newer ones were logged meanwhile, on top
    times = [e["logged_at_ms"] for e in newer]
    assert times == sorted(times, reverse=True)


async def test_a_selective_filter_scans_a_bounded_part_per_page(
    redis_server: RedisServer,
    redis: Redis,
    lms: Sim,
    receiver: Rx,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 20)
    seed_user(sim, "u_2", 1)
    monkeypatch.setattr(delivery_log, "MAX_SCAN", 6)
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url)])
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        pages = []
        cursor = None
        while True:
            page = as_json(await ops.events(user_id="u_2", cursor=cursor))
            pages.append(page["items"])
            if (cursor := page["next_cursor"]) is None:
                break
    assert len(pages) >= 4  # 21 entries, 6 a page: each page looked at no more
    assert [e["user_id"] for p in pages for e in p] == ["u_2"]


async def test_since_and_until_and_a_trim_by_time(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.add_user(ACCOUNT, "u_2")
    settings = settings_for(
        redis_server, lms_url, [endpoint(rx_url)], delivery={"log_retention": "10m"}
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        first = await every_page(ops)
        t1 = first[0]["logged_at_ms"]
        await service.step(300)
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a1", x=1)
        await service.step(1)
        second = [e for e in await every_page(ops) if e["logged_at_ms"] > t1]
        t2 = second[0]["logged_at_ms"]
        only_first = await every_page(ops, until_ms=t1)
        only_second = await every_page(ops, since_ms=t1 + 1, until_ms=t2)
        with pytest.raises(InvalidInput):
            as_json(await ops.events(since_ms=t2, until_ms=t1))
        # ten minutes after the first events, the next commit trims them from the log
        await service.step(301)
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a2", x=2)
        await service.step(1)
        left = await every_page(ops)
        gone = as_json(await ops.event(first[0]["id"]))
        hashes_left = await redis.exists(*(keys.log_event(e["id"]) for e in first))
        hr_index = await redis.zrange(keys.EndpointKeys("hr").log, 0, -1)
    assert {e["id"] for e in only_first} == {e["id"] for e in first} and len(first) == 2
    assert [e["id"] for e in only_second] == [e["id"] for e in second] and len(second) == 1
    assert {e["id"] for e in left} == {second[0]["id"]} | {left[0]["id"]} and len(left) == 2
    assert gone is None and hashes_left == 0
    assert set(hr_index) == {e["id"] for e in left}
    ttl = await redis.pttl(keys.log_event(left[0]["id"]))
    assert 600_000 < ttl <= 600_000 + 3_600_000  # retention, and a margin for the trims


async def test_each_endpoint_keeps_its_newest_events_up_to_the_cap(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 3)
    sim.add_user(ACCOUNT, "u_2")
    # crm gets the completions only: few, so its own log is far from its cap
    crm = endpoint(rx_url, "crm", events=[ev.COMPLETED])
    settings = settings_for(
        redis_server,
        lms_url,
        [endpoint(rx_url), crm],
        delivery={"log_max_per_endpoint": 4},
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()  # three created
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)  # updated, progress, status, completed
        await service.step(1)
        everything = await every_page(ops)
        at_hr = await every_page(ops, endpoint="hr")
        at_crm = await every_page(ops, endpoint="crm")
        created = [e for e in everything if e["type"] == ev.CREATED]
    assert len(at_hr) == 4 and await redis.zcard(keys.EndpointKeys("hr").log) == 4
    assert at_crm and all(e["type"] == ev.COMPLETED for e in at_crm)
    # what hr's log dropped is gone, unless crm's still keeps it
    assert created == []  # the oldest: hr's only, and dropped
    assert {e["id"] for e in everything} == {e["id"] for e in at_hr} | {e["id"] for e in at_crm}


async def test_test_send_is_signed_delivered_once_and_logged(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    sim.add_user(ACCOUNT, "u_1")
    sim.add_user(ACCOUNT, "u_2")
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url), endpoint(rx_url, "crm")])
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        sent = as_json(await ops.test_send("hr"))
        [got] = rx.events
        rx.default_answer = Answer(status=503, body="down for maintenance")
        failed = as_json(await ops.test_send("hr"))
        await service.step(3600)  # an hour of retry schedule: nothing is retried
        logged = as_json(await ops.event(sent["event_id"]))
        logged_failed = as_json(await ops.event(failed["event_id"]))
        redelivered = await ops.redeliver("hr", since_ms=0, until_ms=None, outcome="any")
        with pytest.raises(NotFound):
            as_json(await ops.test_send("nope"))
        depth = await service.service.queue.depth("hr")
        dead = await service.service.queue.dead_count("hr")
        health = await service.service.endpoint_store.health("hr")
    assert sent["delivered"] is True and sent["status"] == 200 and sent["error"] is None
    assert got.verified and got.webhook_id == sent["event_id"] and got.type == ev.TEST
    assert got.data["test"] is True and got.data["endpoint_id"] == "hr"
    assert "account_id" not in got.data
    assert len(rx.received) == 2  # the two test sends to hr, nothing to crm, no retry
    assert failed == {
        "event_id": failed["event_id"],
        "delivered": False,
        "status": 503,
        "error": "HTTP 503",
        "duration_ms": failed["duration_ms"],
    }
    assert (depth, dead, redelivered) == (0, 0, 0)  # never queued, never sent again
    assert health.consecutive_failures == 0  # a test send tells the breaker nothing
    assert logged is not None and logged_failed is not None
    assert logged["type"] == ev.TEST and logged["body"] == got.body
    assert logged["endpoints"] == {"hr": {"outcome": "delivered", "attempts": 1}}
    assert logged_failed["endpoints"] == {"hr": {"outcome": "dead", "attempts": 1}}
    [attempt] = logged_failed["attempts"]["hr"]
    assert attempt["response_body"] == "down for maintenance"


async def test_redeliver_queues_a_range_again_with_the_same_ids(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 4)
    sim.add_user(ACCOUNT, "u_2")
    settings = settings_for(
        redis_server, lms_url, [endpoint(rx_url)], delivery={"retry_schedule": ["1s"]}
    )

    async def change(n: int, round_: int) -> set[str]:
        sim.update_assignment(ACCOUNT, "u_1", f"u_1_a{n}", x=round_)
        before = {e["id"] for e in await every_page(ops)}
        await service.step(1)
        return {e["id"] for e in await every_page(ops)} - before

    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()  # four created: delivered
        first = {e["id"] for e in await every_page(ops)}
        t1 = service.clock.now
        await service.step(60)
        rx.default_answer = Answer(status=400)
        failed = await change(1, 1)
        await service.step(2)  # its retry: dead
        t2 = service.clock.now
        await service.step(60)
        rx.default_answer = Answer(status=200)
        later = await change(2, 2)
        assert await service.service.queue.dead_count("hr") == 1

        rx.events.clear()
        dead_again = await ops.redeliver(
            "hr", since_ms=int((t1 + 1) * 1000), until_ms=int(t2 * 1000), outcome="dead"
        )
        await service.deliver()
        dead_ids = [e.webhook_id for e in rx.events]
        # delivered by now: `delivered` takes it too
        delivered_by_now = await ops.redeliver(
            "hr", since_ms=int((t1 + 1) * 1000), until_ms=int(t2 * 1000), outcome="delivered"
        )
        still_queued = await ops.redeliver(
            "hr", since_ms=int((t1 + 1) * 1000), until_ms=int(t2 * 1000), outcome="any"
        )
        await service.deliver()
        rx.events.clear()
        # everything delivered since the start, the one that was dead included by now
        everything = await ops.redeliver("hr", since_ms=0, until_ms=None, outcome="delivered")
        queued_now = await every_page(ops, outcome="queued")
        await service.deliver()
        redelivered = as_json(await ops.event(next(iter(failed))))
        with pytest.raises(InvalidInput):
            await ops.redeliver("hr", since_ms=2, until_ms=1, outcome="any")
        with pytest.raises(InvalidInput):
            await ops.redeliver("hr", since_ms=0, until_ms=None, outcome="queued")
    assert len(failed) == len(later) == 1
    assert dead_again == 1 and dead_ids == list(failed)
    assert delivered_by_now == 1
    assert still_queued == 0  # what is queued already is not queued twice
    assert everything == len(first | failed | later) == 6
    assert len(queued_now) == 6
    assert sorted(e.webhook_id for e in rx.events) == sorted(first | failed | later)
    assert redelivered is not None
    # attempts: the first and its retry, then one per redelivery
    assert redelivered["endpoints"]["hr"] == {"outcome": "delivered", "attempts": 5}
    assert await redis.zcard(keys.EndpointKeys("hr").dead) == 0


async def test_the_last_attempts_are_kept_and_a_replay_shows_queued(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    sim.add_user(ACCOUNT, "u_2")
    rx.default_answer = Answer(status=404)  # this event's own failure: no pause
    keep = delivery_log.KEEP_ATTEMPTS
    settings = settings_for(
        redis_server, lms_url, [endpoint(rx_url)], delivery={"retry_schedule": ["1s"] * keep}
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        for _ in range(keep):
            await service.step(1.25)
        [letter] = await service.service.queue.dead_letters("hr")
        dead = as_json(await ops.event(letter.event_id))
        assert await ops.replay("hr", None) == 1
        replayed = as_json(await ops.event(letter.event_id))
        rx.default_answer = Answer(status=204)
        await service.deliver()
        delivered = as_json(await ops.event(letter.event_id))
    assert dead is not None and replayed is not None and delivered is not None
    assert letter.attempts == keep + 1 == len(rx.received) - 1
    assert dead["endpoints"]["hr"] == {"outcome": "dead", "attempts": keep + 1}
    # the last KEEP_ATTEMPTS records, oldest first: the first one dropped
    assert [a["attempt"] for a in dead["attempts"]["hr"]] == list(range(2, keep + 2))
    assert replayed["endpoints"]["hr"] == {"outcome": "queued", "attempts": keep + 1}
    assert delivered["endpoints"]["hr"] == {"outcome": "delivered", "attempts": keep + 2}
    # the replay started the schedule afresh: its first attempt is number 1 again
    assert delivered["attempts"]["hr"][-1]["attempt"] == 1
    assert delivered["attempts"]["hr"][-1]["status"] == 204


def test_a_separator_in_an_upstream_id_cannot_shift_the_head() -> None:
    """The log keeps an event's head as parts joined by \\x1f: an id holding one (upstream
    ids are anyone's text) has it replaced, and the other parts stay where they were."""
    head = EventHead(ev.UPDATED, "2026-11-28T06:00:00.123Z", ACCOUNT, "u\x1fx", "a1")
    logged = delivery_log.LoggedHead.of([log_head(head, 5)])
    assert logged == (head._replace(user_id="u\ufffdx"), 5)


async def log_data_keys(redis: Redis) -> dict[str, int]:
    """Every shared `data` in the log → how many logged events it says hold it."""
    found = {}
    async for key in redis.scan_iter(match=keys.LOG_DATA_PREFIX + "*"):
        found[key] = int(await redis.getrange(key, 0, log_body.COUNT_WIDTH - 1))
    return found


async def test_a_changes_events_share_their_data_once_and_read_back_as_signed(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """One change, four events (updated, progress, status, completed), two endpoints: the
    log keeps the record once, and gives back each body byte for byte as sent: the
    signature each endpoint got verifies against it. Redelivered, the same bytes go out."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed_user(sim, "u_1", 1)
    sim.add_user(ACCOUNT, "u_2")
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url), endpoint(rx_url, "crm")])
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        rx.events.clear()
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(1)
        first = list(rx.events)
        shared = await log_data_keys(redis)
        details = {e.webhook_id: as_json(await ops.event(str(e.webhook_id))) for e in first}
        rx.events.clear()
        again = await ops.redeliver("hr", since_ms=0, until_ms=None, outcome="delivered")
        await service.deliver()
        resent = [e for e in rx.events if e.path == first[0].path]
    assert sorted({e.type or "" for e in first}) == sorted(
        [ev.UPDATED, ev.PROGRESS_CHANGED, ev.STATUS_CHANGED, ev.COMPLETED]
    )
    assert len(first) == 8 and all(e.verified for e in first)
    key = signing.secret_key(SECRET)
    for got in first:
        assert got.webhook_id is not None and got.timestamp is not None
        logged = await as_sent(redis, got.webhook_id)
        assert logged is not None and logged.encode() == got.raw
        assert got.signature == signing.sign([key], got.webhook_id, int(got.timestamp), logged)
        detail = details[got.webhook_id]
        assert detail is not None and detail["body"] == json.loads(got.raw)
        assert not await redis.hexists(keys.log_event(got.webhook_id), "b")
        # every value of 64 bytes at most: Redis keeps the hash compact (a listpack), not
        # as a hash table of several times the bytes
        assert await redis.object("encoding", keys.log_event(got.webhook_id)) == "listpack"
    # the baseline's created event holds one, the change's four events the other
    assert sorted(shared.values()) == [1, 4]
    # redelivered from the log (the queue had let them go): the very bytes, signed again
    assert again == 5
    by_id = {e.webhook_id: e.raw for e in first}
    assert {e.webhook_id for e in rx.events} >= set(by_id)
    assert all(e.verified and e.raw == by_id.get(e.webhook_id, e.raw) for e in resent)


async def test_shared_data_leaves_with_the_last_event_that_holds_it(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """The cap drops an endpoint's oldest events: a change's `data` stays while any of its
    events is still logged (here the completion crm keeps) and goes with the last one."""
    sim, lms_url = lms
    _, rx_url = receiver
    seed_user(sim, "u_1", 2)
    sim.add_user(ACCOUNT, "u_2")
    crm = endpoint(rx_url, "crm", events=[ev.COMPLETED])
    settings = settings_for(
        redis_server, lms_url, [endpoint(rx_url), crm], delivery={"log_max_per_endpoint": 2}
    )

    async def holders() -> dict[str, int]:
        """Each shared data → how many logged events hold it (field d)."""
        counts: dict[str, int] = {}
        for e in await every_page(ops):
            d = await redis.hget(keys.log_event(e["id"]), "d")
            counts[d] = counts.get(d, 0) + 1
        return counts

    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()  # two created
        created = await every_page(ops)
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)  # four events: hr keeps two of them
        await service.step(1)
        kept = await every_page(ops)
        shared, held = await log_data_keys(redis), await holders()
        completed = next(e for e in kept if e["type"] == ev.COMPLETED)  # crm's
        sim.update_assignment(ACCOUNT, "u_1", "u_1_a2", x=1)  # one more: hr drops one
        await service.step(1)
        later = await every_page(ops)
        shared_later, held_later = await log_data_keys(redis), await holders()
        body = await as_sent(redis, completed["id"])
    assert len(created) == 2 and not {e["id"] for e in created} & {e["id"] for e in kept}
    # the created events' data left with them; the change's stays, counting its holders
    assert shared == held and len(shared) == 1 and sum(shared.values()) == len(kept) >= 2
    assert shared_later == held_later and len(shared_later) == 2
    assert sum(shared_later.values()) == len(later)
    assert completed["id"] in {e["id"] for e in later}  # crm's, whatever hr dropped
    assert body is not None and json.loads(body)["type"] == ev.COMPLETED


@pytest.mark.any_webhook_body  # the logged body is the test's own, a short stand-in
async def test_an_event_logged_whole_before_reads_and_redelivers_as_it_was(
    redis_server: RedisServer, redis: Redis, lms: Sim, receiver: Rx
) -> None:
    """An entry of the former format (the body whole, field b) reads as ever, and is
    redelivered with those bytes."""
    sim, lms_url = lms
    rx, rx_url = receiver
    sim.add_user(ACCOUNT, "u_1")
    sim.add_user(ACCOUNT, "u_2")
    settings = settings_for(redis_server, lms_url, [endpoint(rx_url)])
    head = EventHead(ev.UPDATED, "2026-11-28T06:00:00.123Z", ACCOUNT, "u_1", "a_1")
    body = (
        '{"id":"evt_old","type":"assignment.updated","timestamp":"2026-11-28T06:00:00.123Z",'
        f'"data":{{"account_id":"{ACCOUNT}","user_id":"u_1","assignment_id":"a_1"}}}}'
    )
    async with driven(settings, sim) as service:
        ops = service.service.operations
        await service.baseline()
        at = int(service.clock.now * 1000)
        await redis.hset(
            keys.log_event("evt_old"),
            mapping={"h": log_head(head, at), "b": body, "o:hr": "delivered 1"},
        )
        await redis.zadd(keys.LOG_EVENTS, {"evt_old": at})
        await redis.zadd(keys.EndpointKeys("hr").log, {"evt_old": at})
        detail = as_json(await ops.event("evt_old"))
        again = await ops.redeliver("hr", since_ms=at, until_ms=at, outcome="delivered")
        await service.deliver()
    assert detail is not None and detail["body"] == json.loads(body)
    assert again == 1
    [got] = [e for e in rx.events if e.webhook_id == "evt_old"]
    assert got.verified and got.raw == body.encode()


@pytest.mark.parametrize(
    "body",
    [
        '{"id":"evt_1","type":"t","timestamp":"x","data":{"a":"é\\u0000","b":[1,2.5e300]}}',
        '{"id":"evt_1","type":"t","timestamp":"x","data":null}',
        '{"id":"evt_1","type":"t","timestamp":"x","data":{}}  ',  # not ours: kept whole
        '{"type":"t","id":"evt_1","timestamp":"x","data":{}}',  # another order: kept whole
    ],
)
def test_a_body_is_split_only_where_it_rejoins_exactly(body: str) -> None:
    data = log_body.split("evt_1", "t", "x", body.encode())
    if data is None:
        assert not body.endswith("}") or not body.startswith('{"id":"evt_1","type"')
        return
    assert log_body.rejoin("evt_1", "t", "x", log_body.pack(data)) == body
    assert (
        log_body.queued_body(
            f"\x1f{log_body.envelope('evt_1', 't', 'x')}\x1f{log_body.pack(data)}".encode()
        )
        == body.encode()
    )
