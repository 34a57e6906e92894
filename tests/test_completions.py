"""`track: [assignments, completions]`: completion records followed beside assignments, by
the same reads, snapshots, commits and guarantees, under both strategies (docs/accounts.md,
Completions)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from redis.asyncio import Redis

from service.changes import events as ev
from service.changes.detect import event_id, record_digest
from service.reading.plan import plan
from service.reading.planner import demand_of_config
from service.sim.lms import SimLMS
from service.sim.receiver import Receiver
from tests.helpers import ACCOUNT, as_json, driven, endpoint, make_settings, of_type, seed_user
from tests.redis_server import RedisServer

Rx = tuple[Receiver, str]
STRATEGIES = ["per_user", "account"]
COMPLETIONS_FEED = "/unified/lms/completions"


def settings_for(
    redis_url: str,
    lms_url: str,
    rx_url: str,
    strategy: str,
    *,
    track: list[str] | None = None,
    users: list[str] | None = None,
    **extra: Any,
) -> Any:
    account: dict[str, Any] = {"account_id": ACCOUNT, "users": users or ["u_1", "u_2"]}
    account["strategy"] = strategy
    account["track"] = track or ["assignments", "completions"]
    polling = {"account_interval": "500ms", **extra.pop("polling", {})}
    endpoints = extra.pop("endpoints", None) or [endpoint(rx_url)]
    return make_settings(
        redis_url, lms_url, endpoints, [], accounts=[account], polling=polling, **extra
    )


def seed(sim: SimLMS) -> None:
    """Two users, two assignments each; u_1 has completed a course already."""
    seed_user(sim, "u_1", 2)
    seed_user(sim, "u_2", 2)
    sim.put_completion(ACCOUNT, "u_1", {"id": "c_old", "course_id": "OLD-1"})


def data_of(events: list[Any], kind: str) -> list[dict[str, Any]]:
    return [e.data for e in of_type(events, kind)]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_completions_are_sent_beside_assignment_changes(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    settings = settings_for(redis_server.url, lms_url, rx_url, strategy)
    async with driven(settings, sim) as service:
        await service.baseline()
        await service.step(0.5)
        assert rx.events == []  # existing completions and assignments: baseline only
        # a course nobody assigned, taken by choice: a completion and no assignment
        sim.put_completion(ACCOUNT, "u_2", {"id": "c_new", "course_id": "ELECTIVE-7"})
        sim.update_completion(ACCOUNT, "u_1", "c_old", score={"percentage": 91})
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        await service.step(0.5)  # nothing twice
    [created] = of_type(rx.events, ev.COMPLETION_CREATED)
    assert created.data["completion_id"] == "c_new" and created.data["user_id"] == "u_2"
    assert created.data["completion"]["course_id"] == "ELECTIVE-7"
    assert created.data["previous"] is None and created.data["sequence"] == 1
    assert "assignment_id" not in created.data and "assignment" not in created.data
    content = record_digest(created.data["completion"])
    assert created.webhook_id == event_id(
        ACCOUNT, "u_2", "c_new", 1, ev.COMPLETION_CREATED, content
    )
    [updated] = of_type(rx.events, ev.COMPLETION_UPDATED)
    assert (updated.data["completion_id"], updated.data["sequence"]) == ("c_old", 2)
    assert updated.data["changed_fields"] == ["score"]
    assert updated.data["previous"]["score"] is None
    # the assignment's change, as ever, in the same reads
    [completed] = of_type(rx.events, ev.COMPLETED)
    assert completed.data["assignment_id"] == "u_1_a1"
    kinds = sorted(e.type for e in rx.events)
    assert kinds == sorted(
        [
            ev.COMPLETION_CREATED,
            ev.COMPLETION_UPDATED,
            ev.UPDATED,
            ev.STATUS_CHANGED,
            ev.COMPLETED,
            ev.PROGRESS_CHANGED,
        ]
    )


def test_a_completion_never_takes_an_assignments_event_id() -> None:
    """The same ids, sequence and record: the type names the resource, so the ids differ."""
    ids = {
        event_id(ACCOUNT, "u_1", "x_1", 1, kind, "same")
        for kind in (ev.CREATED, ev.COMPLETION_CREATED, ev.UPDATED, ev.COMPLETION_UPDATED)
    }
    assert len(ids) == 4


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_removed_completion_is_reported_once_complete_reads_agree(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    sim.put_completion(ACCOUNT, "u_2", {"id": "c_2"})
    settings = settings_for(
        redis_server.url, lms_url, rx_url, strategy, polling={"full_resync_interval": "1s"}
    )
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.delete_completion(ACCOUNT, "u_1", "c_old")
        await service.step(1.0)  # a full read
        await service.step(1.0)  # and another: nothing twice
    [removed] = of_type(rx.events, ev.COMPLETION_REMOVED)
    assert (removed.data["completion_id"], removed.data["sequence"]) == ("c_old", 2)
    assert removed.data["completion"] is None and removed.data["previous"]["id"] == "c_old"
    assert [e.type for e in rx.events] == [ev.COMPLETION_REMOVED]


async def test_switching_strategies_resends_nothing_and_misses_nothing(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    sim.put_completion(ACCOUNT, "u_2", {"id": "c_2"})
    settings = {s: settings_for(redis_server.url, lms_url, rx_url, s) for s in STRATEGIES}
    async with driven(settings["per_user"], sim) as service:
        await service.baseline()
        sim.update_completion(ACCOUNT, "u_1", "c_old", score=1)
        await service.step(0.5)
    sim.update_completion(ACCOUNT, "u_2", "c_2", score=2)  # while switching to the feed
    async with driven(settings["account"], sim) as service:
        await service.baseline()
        sim.update_completion(ACCOUNT, "u_1", "c_old", score=3)
        await service.step(0.5)
    sim.update_completion(ACCOUNT, "u_2", "c_2", score=4)  # while switching back
    async with driven(settings["per_user"], sim) as service:
        await service.baseline()
        sim.update_completion(ACCOUNT, "u_1", "c_old", score=5)
        await service.step(0.5)
    updates = [
        (d["completion_id"], d["sequence"], d["completion"]["score"])
        for d in data_of(rx.events, ev.COMPLETION_UPDATED)
    ]
    assert updates == [
        ("c_old", 2, 1),
        ("c_2", 2, 2),
        ("c_old", 3, 3),
        ("c_2", 3, 4),
        ("c_old", 4, 5),
    ]
    assert len({e.webhook_id for e in rx.events}) == len(rx.events)


async def test_tracking_completions_later_baselines_them_silently(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    only = settings_for(redis_server.url, lms_url, rx_url, "account", track=["assignments"])
    both = settings_for(redis_server.url, lms_url, rx_url, "account")
    async with driven(only, sim) as service:
        await service.baseline()
        sim.clear_requests()
        await service.step(0.5)
        assert COMPLETIONS_FEED not in [r.path for r in sim.requests]  # the default
    async with driven(both, sim) as service:
        # the completions feed's first read, when the feed is next due: its baseline
        await service.step(2.0)
        assert rx.events == []
        sim.put_completion(ACCOUNT, "u_1", {"id": "c_3"})
        await service.step(0.5)
    assert [d["completion_id"] for d in data_of(rx.events, ev.COMPLETION_CREATED)] == ["c_3"]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_completions_cost_one_request_more_a_read_when_nothing_changed(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    counts = {}
    for track in (["assignments"], ["assignments", "completions"]):
        await redis.flushdb()
        settings = settings_for(redis_server.url, lms_url, rx_url, strategy, track=track)
        async with driven(settings, sim) as service:
            await service.baseline()
            await service.step(0.5)
            sim.clear_requests()
            await service.step(0.5)  # one interval on, nothing changed
            counts[len(track)] = len(sim.requests)
    # a feed account: one more read of the account; per user: one more request per user
    assert counts[2] - counts[1] == (1 if strategy == "account" else 2)
    assert rx.events == []


async def test_completion_records_without_an_id_or_user_are_skipped(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    settings = settings_for(redis_server.url, lms_url, rx_url, "account")
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.put_completion(ACCOUNT, "u_1", {"id": "c_orphan", "user_id": None})
        sim.put_completion(ACCOUNT, "u_1", {"id": "", "course_id": "NO-ID"})
        sim.put_completion(ACCOUNT, "u_2", {"id": "c_fine"})
        await service.step(0.5)
        metrics = service.service.metrics.render().decode()
    assert [d["completion_id"] for d in data_of(rx.events, ev.COMPLETION_CREATED)] == ["c_fine"]
    assert 'lms_webhooks_records_skipped_total{reason="missing_user_id"} 1.0' in metrics
    assert 'lms_webhooks_records_skipped_total{reason="missing_id"} 1.0' in metrics


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_malformed_completions_page_fails_that_read_only(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    settings = settings_for(redis_server.url, lms_url, rx_url, strategy, users=["u_1"])
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.faults.forced.append({"malformed_json": True, "path": "/completions"})
        sim.put_completion(ACCOUNT, "u_1", {"id": "c_new"})
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        # the assignments read committed; the completions read failed and waits its retry
        assert [e.type for e in rx.events if e.type.startswith("completion.")] == []
        assert len(of_type(rx.events, ev.COMPLETED)) == 1
        await service.step(30.0)
    assert [d["completion_id"] for d in data_of(rx.events, ev.COMPLETION_CREATED)] == ["c_new"]
    assert len(of_type(rx.events, ev.COMPLETED)) == 1


async def test_endpoints_subscribe_to_completion_events_and_the_log_finds_them(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    only = endpoint(rx_url, events=[ev.COMPLETION_CREATED])
    settings = settings_for(redis_server.url, lms_url, rx_url, "account", endpoints=[only])
    async with driven(settings, sim) as service:
        await service.baseline()
        sim.put_completion(ACCOUNT, "u_2", {"id": "c_new"})
        sim.update_completion(ACCOUNT, "u_1", "c_old", score=7)
        sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
        await service.step(0.5)
        operations = service.service.operations
        found = as_json(await operations.events(completion_id="c_new"))
        none = as_json(await operations.events(assignment_id="c_new"))
    assert [e.type for e in rx.events] == [ev.COMPLETION_CREATED]
    [item] = found["items"]
    assert item["type"] == ev.COMPLETION_CREATED and item["completion_id"] == "c_new"
    assert item["assignment_id"] is None and item["user_id"] == "u_2"
    assert none["items"] == []


async def test_the_plan_counts_completion_reads(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx
) -> None:
    """A feed account tracking completions reads two feeds an interval; the plan and the
    admin API say so."""
    sim, lms_url = lms
    _, rx_url = receiver
    seed(sim)
    plans = {}
    described: dict[str, Any] = {}
    for track in (["assignments"], ["assignments", "completions"]):
        settings = settings_for(redis_server.url, lms_url, rx_url, "account", track=track)
        plans[len(track)] = plan(demand_of_config(settings))
        async with driven(settings, sim) as service:
            described = as_json(await service.service.operations.budget())
    # one feed every 0.5 s: 120 reads a minute, twice with completions
    assert (plans[1].needed_per_minute, plans[2].needed_per_minute) == (120.0, 240.0)
    assert described["completions"] == {"accounts": 1, "users_polled": 0, "per_minute": 120.0}


@pytest.mark.parametrize("strategy", [*STRATEGIES, "auto"])
async def test_a_provider_without_completions_holds_no_assignment_back(
    redis_server: RedisServer, redis: Redis, lms: tuple[SimLMS, str], receiver: Rx, strategy: str
) -> None:
    """Its completion routes answer 404: completions are skipped for the account for a day
    (said once), and its assignments are read on, on their cadence."""
    sim, lms_url = lms
    rx, rx_url = receiver
    seed(sim)
    sim.faults.forced.extend({"status": 404, "path": "/completions"} for _ in range(5))
    settings = settings_for(redis_server.url, lms_url, rx_url, strategy)
    with structlog.testing.capture_logs() as logs:
        async with driven(settings, sim) as service:
            await service.baseline()  # its reads, in flight at once, ask for completions
            await service.step(0.5)
            sim.clear_requests()
            sim.progress(ACCOUNT, "u_1", "u_1_a1", 100)
            for _ in range(3):
                await service.step(settings.polling.interval)
            assert len(data_of(rx.events, ev.COMPLETED)) == 1
            polls = service.service.stores.polls
            assert await polls.backed_off_accounts() == {}
            assert await service.service.stores.users.fallbacks() == {}  # `auto` reads on
    assert not [r for r in sim.requests if r.path.endswith("/completions")]  # skipped
    assert [e["event"] for e in logs].count("resource_not_served") == 1
