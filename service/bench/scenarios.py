"""The scenarios of `lms-webhooks bench`. Each takes a fresh Bench and a scale (1 = the
documented sizes, smaller for a quick check) and returns its figures.

Ratios compare two things measured in the same run, on the same machine, at the same time.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import math
import random
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

from service.bench.harness import SECRET, Bench, Received, cpu_seconds, memory_kb, twin
from service.bench.load import (
    ACCOUNT,
    change_every_record,
    change_steadily,
    complete_every_record,
    owner_of,
    poll_everyone_now,
    queue_events,
    seed_users,
    skewed_changes,
    start_every_record,
    store_baselines,
    store_feed_state,
    user_ids,
)
from service.bench.roundtrips import idle_poll_cost
from service.bench.tenants import (
    change_tenants,
    provider_429s,
    seed_tenants,
    skewed_accounts,
    tenant_config,
)
from service.changes.events import COMPLETED
from service.config import EndpointSettings, PollingSettings
from service.reading.plan import HEADROOM, IDLE_BOUND
from service.sim.faults import RequestRecord
from service.sim.lms_state import ACCOUNT_ASSIGNMENTS_PATH
from service.store import keys
from service.store.leases import leased
from service.store.log import DeliveryLog
from service.store.log_policy import DEFAULT_LOG
from service.store.polls import PollStore
from service.timefmt import parse_iso

Scenario = Callable[..., Awaitable[dict[str, Any]]]
POLLS_OK = "lms_webhooks_poll_duration_seconds_count"
PLAIN_POST = (sys.executable, "-m", "service.bench.plain_post")


def _n(full: int, scale: float, least: int = 1) -> int:
    return max(least, round(full * scale))


async def _wait(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark gave up waiting for {what} after {timeout:.0f}s")
        await asyncio.sleep(0.05)


async def _polls(bench: Bench) -> float:
    return await bench.total(POLLS_OK, outcome="ok")


async def upstream_budget(bench: Bench, scale: float) -> dict[str, Any]:
    """Demand far above the budget: how much of the budget is used, and 429s we caused."""
    users = user_ids(_n(2000, scale, 50))
    budget = 1200
    window = max(10.0, 60.0 * scale)
    seed_users(bench.lms, len(users), 1)
    bench.lms.set_rate_limit(budget)  # the upstream enforces exactly the configured budget
    config = bench.service_config(users, budget=budget, interval="1s", endpoint=False)
    figures: dict[str, Any] = {"users": len(users), "budget_per_minute": budget}
    for processes in (1, 2):
        await bench.start_services(config, processes)
        await asyncio.sleep(5.0)  # past the start-up burst: the steady state is measured
        start = time.time()
        await asyncio.sleep(window)
        end = time.time()
        in_window = [r for r in bench.lms.requests if start <= r.time < end]
        achieved = len(in_window) / window * 60.0
        figures[f"processes_{processes}"] = {
            "window_seconds": window,
            "requests_per_minute": round(achieved, 1),
            "budget_used": round(achieved / budget, 3),
            "self_caused_429": sum(1 for r in bench.lms.requests if r.status == 429),
        }
        bench.stop_services()
        bench.lms.clear_requests()
        await asyncio.sleep(65.0 * scale if processes == 1 else 0)  # let the bucket refill
    return figures


async def idle_cost(bench: Bench, scale: float) -> dict[str, Any]:
    """Polls that find nothing new: requests, Redis round trips and CPU per poll."""
    users = user_ids(_n(300, scale, 20))
    seed_users(bench.lms, len(users), 10)
    config = bench.service_config(users, interval="1s", endpoint=False)
    requests, trips = await idle_poll_cost(bench, config)
    (process,) = await bench.start_services(config)
    await _wait(lambda: _baselined(bench, len(users)), 120, "every user's first poll")
    await asyncio.sleep(2.0)
    window = max(5.0, 20.0 * scale)
    polls0, requests0, cpu0 = await _polls(bench), len(bench.lms.requests), cpu_seconds(process.pid)
    await asyncio.sleep(window)
    polls1, requests1, cpu1 = await _polls(bench), len(bench.lms.requests), cpu_seconds(process.pid)
    polls = polls1 - polls0
    return {
        "users": len(users),
        "polls_per_second": round(polls / window, 1),
        "http_requests_per_poll": requests,
        "redis_round_trips_per_poll": trips,
        "http_requests_per_poll_in_window": round((requests1 - requests0) / polls, 2),
        "cpu_us_per_poll": round((cpu1 - cpu0) / polls * 1e6),
    }


async def _baselined(bench: Bench, users: int) -> bool:
    return await _polls(bench) >= users


async def detection(bench: Bench, scale: float) -> dict[str, Any]:
    """Every record changed at once: changes detected and committed per second."""
    users = user_ids(_n(400, scale, 10))
    per_user = 100
    seed_users(bench.lms, len(users), per_user)
    config = bench.service_config(users, interval="1h", endpoint=True)
    (process,) = await bench.start_services(config, role="poller")
    await poll_everyone_now(bench.redis, users)
    await _wait(lambda: _baselined(bench, len(users)), 300, "the baseline polls")
    total = change_every_record(bench.lms)
    events = "lms_webhooks_events"
    before = await bench.total(events, type="assignment.updated")
    cpu0 = cpu_seconds(process.pid)
    started = time.perf_counter()
    await poll_everyone_now(bench.redis, users)

    async def done() -> bool:
        return await bench.total(events, type="assignment.updated") - before >= total

    await _wait(done, 600, "every change to be committed")
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(process.pid) - cpu0
    return {
        "changed_assignments": total,
        "seconds": round(elapsed, 2),
        "changes_per_second": round(total / elapsed),
        "changes_per_cpu_second": round(total / cpu),
        "events_per_change": round((await bench.total(events)) / total, 2),
    }


async def _fill_queue(
    bench: Bench, count: int, *, every_event: bool = False
) -> tuple[EndpointSettings, int]:
    """The bench's endpoint and how many events were queued for it (queue_events)."""
    config = bench.service_config([], endpoint=True)
    endpoint = EndpointSettings.model_validate(config["endpoints"][0])
    queued = await queue_events(PollStore(bench.redis), endpoint, count, every_event=every_event)
    return endpoint, queued


async def _drain(
    bench: Bench, count: int, processes: int, concurrency: int = 32
) -> tuple[float, float]:
    """Start dispatchers on a full queue: (deliveries per second, their CPU µs per delivery)."""
    bench.received.count, bench.received.first_at = 0, None
    config = bench.service_config([], endpoint=True, delivery_concurrency=concurrency)
    started = await bench.start_services(config, processes, role="dispatcher")
    cpu0 = sum(cpu_seconds(p.pid) for p in started)

    async def delivered() -> bool:
        return bench.received.count >= count

    await _wait(delivered, 600, "the queue to drain")
    cpu = sum(cpu_seconds(p.pid) for p in started) - cpu0
    assert bench.received.first_at is not None and bench.received.last_at is not None
    bench.stop_services()
    return count / (bench.received.last_at - bench.received.first_at), cpu / count * 1e6


def _plain_post(bench: Bench, body: str, count: int, concurrency: int) -> tuple[float, float]:
    """The plain POST loop in its own process: (posts per second, its CPU µs per post)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(
        [*PLAIN_POST, f"{bench.receiver_url}/hooks", str(count), str(concurrency), SECRET],
        input=body,
        capture_output=True,
        text=True,
        check=True,
    )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return float(json.loads(out.stdout)["per_second"]), cpu / count * 1e6


async def delivery(bench: Bench, scale: float) -> dict[str, Any]:
    """The dispatcher against a plain POST loop, same receiver, same concurrency; three rounds
    each, alternating, and the medians compared, so a noisy moment does not decide."""
    count = _n(20_000, scale, 500)
    concurrency = 32
    service: list[tuple[float, float]] = []
    plain: list[tuple[float, float]] = []
    for _ in range(3):
        await bench.redis.flushall()
        endpoint, _ = await _fill_queue(bench, count)
        bodies = keys.EndpointKeys(endpoint.id).body
        body = str(await bench.redis.hget(bodies, str(await bench.redis.hrandfield(bodies))))
        service.append(await _drain(bench, count, 1, concurrency))
        plain.append(await asyncio.to_thread(_plain_post, bench, body, count, concurrency))
    service_rate, service_cpu = (statistics.median(x) for x in zip(*service, strict=True))
    plain_rate, plain_cpu = (statistics.median(x) for x in zip(*plain, strict=True))
    return {
        "events": count,
        "rounds": len(service),
        "concurrency": concurrency,
        "service_per_second": round(service_rate),
        "plain_post_per_second": round(plain_rate),
        "ratio": round(service_rate / plain_rate, 3),
        "service_cpu_us_per_event": round(service_cpu),
        "plain_post_cpu_us_per_post": round(plain_cpu),
    }


async def burst(bench: Bench, scale: float) -> dict[str, Any]:
    """Many completions at once, with the endpoint's default settings (one `completed` event
    per assignment): time from the changes to the last webhook received, against what is
    physically possible: one poll interval (to see them) plus a plain POST loop sending as
    many webhooks (to send them), at the same concurrency.

    Run at two poll intervals: at 1 s the polls themselves compete with the deliveries for
    the service's one core; at 5 s they are spread out."""
    users = user_ids(_n(500, scale, 20))
    per_user = 10
    seed_users(bench.lms, len(users), per_user)
    start_every_record(bench.lms)
    concurrency = EndpointSettings.model_fields["concurrency"].default
    figures: dict[str, Any] = {"users": len(users), "completions": len(users) * per_user}
    body = ""
    for interval in (1.0, 5.0):
        config = bench.service_config(
            users, interval=f"{interval:g}s", delivery_concurrency=None, events=[COMPLETED]
        )
        config["polling"]["concurrency"] = 16
        bench.received.count, bench.received.first_at = 0, None
        (process,) = await bench.start_services(config)
        # the first polls are spread over the interval, as they are all along
        await _wait(lambda: _baselined(bench, len(users)), 300, "every user's baseline")
        cpu0 = cpu_seconds(process.pid)
        changed_at = time.time()
        completions = complete_every_record(bench.lms)

        async def delivered(expected: int = completions) -> bool:
            return bench.received.count >= expected

        await _wait(delivered, 600, "every completion to be delivered")
        first, last = bench.received.first_at, bench.received.last_at
        assert first is not None and last is not None
        cpu = cpu_seconds(process.pid) - cpu0
        body = body or bench.received.sample
        bench.stop_services()
        await bench.redis.flushall()
        start_every_record(bench.lms)  # ready to complete again
        plain_rate, _ = await asyncio.to_thread(_plain_post, bench, body, completions, concurrency)
        limit = completions / plain_rate + interval
        figures[f"interval_{interval:g}s"] = {
            "seconds_to_last_webhook": round(last - changed_at, 2),
            "seconds_to_first_webhook": round(first - changed_at, 2),
            "webhooks_per_second_first_to_last": round(completions / (last - first)),
            "plain_post_per_second": round(plain_rate),
            "limit_seconds": round(limit, 2),
            "ratio": round(limit / (last - changed_at), 3),
            "service_cpu_seconds": round(cpu, 2),
        }
    figures["endpoint_concurrency"] = concurrency
    return figures


async def latency(bench: Bench, scale: float) -> dict[str, Any]:
    """Upstream change → webhook received, at a 1 s interval under moderate load."""
    users = user_ids(_n(500, scale, 20))
    seed_users(bench.lms, len(users), 10)
    config = bench.service_config(users, interval="1s", endpoint=True)
    await bench.start_services(config)
    await _wait(lambda: _baselined(bench, len(users)), 120, "the baseline polls")
    bench.received.track_latency = True
    changes_per_second = 50
    duration = max(5.0, 30.0 * scale)
    rounds = int(duration * changes_per_second)
    for _ in range(rounds):
        bench.lms.churn_once()
        await asyncio.sleep(1 / changes_per_second)
    await asyncio.sleep(3.0)
    samples = sorted(bench.received.latencies)
    cuts = statistics.quantiles(samples, n=100) if len(samples) > 1 else samples * 99
    return {
        "users": len(users),
        "interval_seconds": 1.0,
        "changes_per_second": changes_per_second,
        "events_received": len(samples),
        "p50_seconds": round(cuts[49], 3),
        "p99_seconds": round(cuts[98], 3),
        "max_seconds": round(samples[-1], 3),
    }


async def footprint(bench: Bench, scale: float) -> dict[str, Any]:
    """Service memory and Redis bytes with many tracked users, ten assignments each."""
    users = user_ids(_n(100_000, scale, 200))
    per_user = 10
    seed_users(bench.lms, len(users), per_user)
    empty = int((await bench.redis.info("memory"))["used_memory"])
    interval_ms = 600_000
    await store_baselines(PollStore(bench.redis), bench.lms, users, spread_ms=interval_ms)
    used = int((await bench.redis.info("memory"))["used_memory"])
    config = bench.service_config(users, interval="10m", endpoint=True)
    (process,) = await bench.start_services(config)
    await asyncio.sleep(max(10.0, 30.0 * scale))
    polled = await _polls(bench)
    return {
        "tracked_users": len(users),
        "tracked_assignments": len(users) * per_user,
        "redis_bytes_per_assignment": round((used - empty) / (len(users) * per_user)),
        "service_rss_mb": round(memory_kb(process.pid) / 1024, 1),
        "service_peak_rss_mb": round(memory_kb(process.pid, "VmHWM") / 1024, 1),
        "polls_during_measurement": int(polled),
    }


async def log_memory(bench: Bench, scale: float) -> dict[str, Any]:
    """What the delivery log costs in Redis: `used_memory` before and after queueing and
    delivering real change events (as detection builds them, one endpoint, each delivered at
    the first attempt to a receiver answering an empty 2xx). After delivery the queue holds
    nothing: what is left is the log (each event's head, body, outcome and attempt record,
    its two index entries, the endpoint's recent attempts).

    Twice: one event per change (the figure as first measured: nothing to share), then
    every event of each change as detection emits them (`every_event`: 2.5 a change, a
    quarter of them completions), whose events share their `data`."""
    count = _n(20_000, scale, 1000)
    figures: dict[str, Any] = {}
    for every_event in (False, True):
        await bench.redis.flushall()
        empty = int((await bench.redis.info("memory"))["used_memory"])
        endpoint, queued = await _fill_queue(bench, count, every_event=every_event)
        after_queue = int((await bench.redis.info("memory"))["used_memory"])
        sample = [str(event_id) for event_id in await bench.redis.zrange(keys.LOG_EVENTS, 0, 99)]
        log = DeliveryLog(bench.redis, DEFAULT_LOG, [endpoint.id])
        sizes = [len((await log.body_as_sent(event_id) or "").encode()) for event_id in sample]
        await _drain(bench, queued, 1)
        assert await bench.redis.zcard(keys.EndpointKeys(endpoint.id).due) == 0
        logged = int((await bench.redis.info("memory"))["used_memory"])
        encodings = Counter(
            [await bench.redis.object("encoding", keys.log_event(e)) for e in sample]
        )
        suffix = "_every_event" if every_event else ""
        figures |= {
            f"events{suffix}": queued,
            f"body_bytes_mean{suffix}": round(statistics.mean(sizes)),
            f"redis_bytes_per_1000_events_queued{suffix}": round(
                (after_queue - empty) / queued * 1000
            ),
            f"redis_bytes_per_1000_events_logged{suffix}": round((logged - empty) / queued * 1000),
            f"event_hash_encodings{suffix}": dict(encodings),
        }
    return figures


async def scale_out(bench: Bench, scale: float) -> dict[str, Any]:
    """Two dispatching processes against one on the same queued load.

    Delivery-bound: the receiver takes 50 ms per webhook, as a real HR system might, and each
    process sends at most its endpoint concurrency (8) at once. So the figure shows whether
    processes share one queue without getting in each other's way. On this 2-core machine a
    CPU-bound load (an instant receiver) cannot scale: one process, Redis and the receiver
    already use both cores; that figure is reported too, without a target.
    """
    figures: dict[str, Any] = {}
    for name, delay, count, concurrency in (
        ("receiver_50ms", 0.05, _n(3000, scale, 300), 8),
        ("receiver_instant", 0.0, _n(20_000, scale, 500), 32),
    ):
        bench.received.delay = delay
        rates = {}
        for processes in (1, 2):
            await bench.redis.flushall()
            await _fill_queue(bench, count)
            rates[processes], _ = await _drain(bench, count, processes, concurrency)
        figures[name] = {
            "events": count,
            "concurrency_per_process": concurrency,
            "one_process_per_second": round(rates[1]),
            "two_processes_per_second": round(rates[2]),
            "speedup": round(rates[2] / rates[1], 3),
        }
    bench.received.delay = 0.0
    return figures


TAKEOVER_INTERVAL = 2.0


async def takeover(bench: Bench, scale: float) -> dict[str, Any]:
    """Two processes share 100 users polled every 2 s; one is killed (-9) holding a full
    batch of claims (requests hang for a second then, so both fill their 16 poll slots; more
    than 16 leases held means the killed one held some). The figure: the longest time from
    the kill until a user leased at that moment is polled again (a request that reached the
    simulator after the kill), over a few rounds. Target: max(2 intervals, 5 s)."""
    users = user_ids(100)
    seed_users(bench.lms, len(users), 1)
    config = bench.service_config(users, interval=f"{TAKEOVER_INTERVAL:g}s", endpoint=False)
    slowest: list[float] = []
    held_counts: list[int] = []
    for _ in range(_n(5, scale)):
        await bench.redis.flushall()
        bench.lms.faults.delay_seconds = 0.0
        victim, _survivor = await bench.start_services(config, 2)
        bench.lms.clear_requests()
        await _wait(_asked_for(bench, set(users), after=bench.lms.clock()), 60, "every user polled")
        bench.lms.faults.delay_seconds = 1.0
        await _wait(_more_leased_than(bench, 16), 30, "both processes' poll slots full")
        held = {keys.parse_user_member(m)[1] for m in await _leased(bench)}
        killed_at = bench.lms.clock()
        victim.kill()
        bench.lms.faults.delay_seconds = 0.0
        await _wait(_asked_for(bench, held, after=killed_at), 60, "every held user polled again")
        first = _first_requests(bench, held, killed_at)
        slowest.append(max(first.values()) - killed_at)
        held_counts.append(len(held))
        bench.stop_services()
    events = [await _event_takeover(bench) for _ in range(_n(3, scale))]
    return {
        "users": len(users),
        "interval_seconds": TAKEOVER_INTERVAL,
        "rounds": len(slowest),
        "held_at_kill": held_counts,
        "max_seconds": round(max(slowest), 3),
        "per_round_seconds": [round(x, 3) for x in slowest],
        "events_held_at_kill": [held for held, _ in events],
        "events_max_seconds": round(max(seconds for _, seconds in events), 3),
    }


TAKEOVER_EVENTS = 2000
TAKEOVER_CONCURRENCY = 32  # a process holds at most twice this many claims


async def _event_takeover(bench: Bench) -> tuple[int, float]:
    """Two dispatchers on a full queue, the receiver taking a second per webhook, so both
    hold all the claims they can (more than one process can hold means the killed one held
    some); one is killed (-9). Returns the claims held at the kill and how long until every
    event claimed then was delivered (acknowledged: out of the queue)."""
    await bench.redis.flushall()
    await _fill_queue(bench, TAKEOVER_EVENTS)
    bench.received.delay = 1.0
    config = bench.service_config([], endpoint=True, delivery_concurrency=TAKEOVER_CONCURRENCY)
    victim, _survivor = await bench.start_services(config, 2, role="dispatcher")
    due = keys.EndpointKeys("hr").due

    async def claimed() -> list[str]:
        return await leased(bench.redis, due)

    async def both_full() -> bool:
        return len(await claimed()) > 2 * TAKEOVER_CONCURRENCY

    await _wait(both_full, 60, "both dispatchers holding all the claims they can")
    held = await claimed()
    killed_at = time.time()
    victim.kill()
    bench.received.delay = 0.0

    async def all_delivered() -> bool:
        return all(score is None for score in await bench.redis.zmscore(due, held))

    await _wait(all_delivered, 120, "every event claimed at the kill delivered")
    slowest = time.time() - killed_at  # within _wait's 50 ms poll of it
    bench.stop_services()
    return len(held), slowest


async def _leased(bench: Bench) -> list[str]:
    return await leased(bench.redis, keys.POLL_DUE)


def _more_leased_than(bench: Bench, count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(await _leased(bench)) > count

    return check


def _first_requests(bench: Bench, users: set[str], after: float) -> dict[str, float]:
    """When each of `users` was first asked for after `after` (the simulator's clock)."""
    first: dict[str, float] = {}
    for record in bench.lms.requests:
        if record.time > after and record.user_id in users:
            first.setdefault(record.user_id, record.time)
    return first


def _asked_for(bench: Bench, users: set[str], after: float) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(_first_requests(bench, users, after)) == len(users)

    return check


def nearest_rank(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile of `values`, sorted, where inf stands for a change not
    delivered: None when the percentile falls on one (the figure was not reached)."""
    if not values:
        return None
    value = values[max(0, math.ceil(fraction * len(values)) - 1)]
    return None if math.isinf(value) else round(value, 3)


def delivery_figures(
    made: dict[tuple[str, str], float], received: dict[tuple[str, str], float]
) -> dict[str, Any]:
    """Changes made against changes received: how many arrived, and how long after the
    simulator applied each one (p50/p99 over every change made, so one not delivered counts
    as later than any that was)."""
    latencies = sorted(received[c] - at if c in received else math.inf for c, at in made.items())
    delivered = [x for x in latencies if not math.isinf(x)]
    return {
        "changes_made": len(made),
        "changes_delivered": len(delivered),
        "undelivered": len(made) - len(delivered),
        "unexpected_changes_received": len(received.keys() - made.keys()),
        "p50_seconds": nearest_rank(latencies, 0.5),
        "p99_seconds": nearest_rank(latencies, 0.99),
        "delivered_p50_seconds": nearest_rank(delivered, 0.5),
        "delivered_max_seconds": round(delivered[-1], 3) if delivered else None,
    }


REACH_ACCOUNT_INTERVAL = 10.0
REACH_INTERVAL = 300.0  # per_user: each user's target cadence
# the default, as deployed: each feed read asks from its watermark minus this, so it reads
# again the changes of the last `overlap` seconds, and that is part of what it costs
REACH_OVERLAP = float(PollingSettings.model_fields["overlap"].default)
FEED_READS = "lms_webhooks_feed_reads"
UPDATED_AFTER = "filter[updated_after]"


async def reach(bench: Bench, scale: float) -> dict[str, Any]:
    """One account of 20,000 users × 5 assignments on a budget of 1,000 requests a minute,
    changes at 20/s for a minute; read through the account's change feed (`strategy:
    account`, every 10 s), then user by user (`per_user`, every 5 m). Per strategy: upstream
    requests in the measured minute, change → webhook latency, and which changes arrived.

    The baseline (a first complete read: 1,000 pages for the feed, 20,000 polls per user) is
    not measured: each user's snapshots are committed straight into Redis, marked baselined,
    and for the feed a watermark and last complete read of now, so its first read is
    incremental. For the feed, changes start `overlap` before the measured minute, so every
    read in it reads a full overlap again, as it does all day long. The budget is not
    scaled: `--scale` shrinks the users, the minute and that lead.
    """
    users = user_ids(_n(20_000, scale, 200))
    per_user = 5
    budget = 1000
    per_second = 20.0
    window = max(5.0, 60.0 * scale)
    lead = REACH_OVERLAP * scale
    seed_users(bench.lms, len(users), per_user)
    figures: dict[str, Any] = {
        "users": len(users),
        "assignments": len(users) * per_user,
        "budget_per_minute": budget,
        "changes_per_second": per_second,
        "changes_seconds": window,
        "account_interval_seconds": REACH_ACCOUNT_INTERVAL,
        "per_user_interval_seconds": REACH_INTERVAL,
        "overlap_seconds": REACH_OVERLAP,
        "baseline": "seeded in Redis (snapshots, baselined, feed watermark), not measured",
    }
    rng = random.Random(20)
    # After the last change, the feed has its p99 target's allowance (then some, to see late
    # arrivals); per user, a change still waiting for its user's poll by then is reported as
    # not delivered within the run (a quick look shortens that wait with the minute).
    allowance = REACH_ACCOUNT_INTERVAL + 5.0
    # each strategy twice: assignments alone, then completions tracked too (no completion
    # changes: what tracking them costs the same assignment changes)
    for strategy, before, after in (
        ("account", lead, allowance),
        ("per_user", 0.0, allowance * scale),
    ):
        for completions in (False, True):
            started = time.perf_counter()
            # distinct assignments: one changed twice between two reads is one change to a
            # poller
            serials = rng.sample(
                range(1, len(users) * per_user + 1), round(per_second * (before + window))
            )
            run = await _reach_run(
                bench,
                users,
                strategy,
                budget,
                serials,
                per_user,
                (before, window, after),
                completions=completions,
            )
            run["bench_seconds"] = round(time.perf_counter() - started, 1)
            figures[f"{strategy}_completions" if completions else strategy] = run
    return figures


async def _reach_run(
    bench: Bench,
    users: list[str],
    strategy: str,
    budget: int,
    serials: list[int],
    per_user: int,
    seconds: tuple[float, float, float],
    *,
    completions: bool = False,
) -> dict[str, Any]:
    """One strategy: seed, start, change `serials` evenly over `before` seconds then the
    measured `window`, and see what the window's changes cost and which of them arrived
    within `allowance` of the last one. `completions`: tracked too (the simulator has none;
    their first read baselines them during the start-up)."""
    before, window, allowance = seconds
    lms, received = bench.lms, bench.received
    await bench.redis.flushall()
    lms.set_rate_limit(budget)  # a full bucket: the previous run's requests do not count
    lms.clear_requests()
    received.changes.clear()
    received.track_changes = True
    feed = strategy == "account"
    store = PollStore(bench.redis)
    await store_baselines(store, lms, users, spread_ms=None if feed else int(REACH_INTERVAL * 1000))
    if feed:
        await store_feed_state(bench.redis, ACCOUNT, int(time.time() * 1000))
    config = bench.service_config(users, budget=budget, interval=f"{REACH_INTERVAL:g}s")
    config["accounts"][0]["strategy"] = strategy
    if completions:
        config["accounts"][0]["track"] = ["assignments", "completions"]
    config["polling"]["account_interval"] = f"{REACH_ACCOUNT_INTERVAL:g}s"
    config["polling"]["overlap"] = f"{REACH_OVERLAP:g}s"
    (process,) = await bench.start_services(config)

    # past the start-up: the feed's first read (it loads every user's state once) or the
    # first polls; what follows is the steady state
    async def started() -> bool:
        return (await bench.total(FEED_READS) if feed else await _polls(bench)) >= 1

    await _wait(started, 120, f"the first {strategy} read")
    per_second = len(serials) / (before + window)
    lead = round(before * per_second)
    early = await change_steadily(lms, serials[:lead], per_user, per_second) if lead else {}
    cpu0, start = cpu_seconds(process.pid), time.time()
    made = await change_steadily(lms, serials[lead:], per_user, per_second)
    # requests are counted over the window, and at least one feed interval: a quick look
    # (a window of a few seconds) must still hold a read
    counted = max(window, REACH_ACCOUNT_INTERVAL) if feed else window
    await asyncio.sleep(max(0.0, start + counted - time.time()))
    cpu = cpu_seconds(process.pid) - cpu0
    last_change = start + window

    async def all_arrived() -> bool:
        return made.keys() <= received.changes.keys()

    try:
        slack = 15.0 if feed else 0.0
        await _wait(all_arrived, last_change + allowance + slack - time.time(), "every change")
    except TimeoutError:
        pass
    arrived = {c: at for c, at in received.changes.items() if c not in early}
    in_window = [r for r in lms.requests if start <= r.time < start + counted]
    per_minute = len(in_window) / counted * 60.0
    figures: dict[str, Any] = {
        "requests_per_minute": round(per_minute, 1),
        "budget_used": round(per_minute / budget, 3),
        "requests_counted_seconds": counted,
        "throttled_429": sum(1 for r in in_window if r.status == 429),
        **delivery_figures(made, arrived),
        "seconds_allowed_after_last_change": allowance,
        "service_cpu_share": round(cpu / counted, 3),
    }
    if feed:
        pages = [r for r in in_window if r.path == ACCOUNT_ASSIGNMENTS_PATH]
        firsts = [r for r in pages if "next" not in r.query]
        figures |= {
            "changes_before_window": len(early),
            "feed_reads": len(firsts),
            "feed_pages": len(pages),
            # a read without the filter is a complete one: the baseline must not be here
            "feed_complete_reads": sum(1 for r in firsts if UPDATED_AFTER not in r.query),
        }
    else:
        needed = len(users) * 60.0 / REACH_INTERVAL
        figures |= {
            "needed_requests_per_minute": round(needed),
            # each user's poll comes round this often at the rate the budget allows
            "effective_interval_seconds": round(len(users) / per_minute * 60.0),
            "behind_factor": round(needed / per_minute, 2),
            "users_overdue_at_end": await bench.redis.zcount(
                keys.POLL_DUE, 0, int(time.time() * 1000)
            ),
        }
    received.track_changes = False
    bench.stop_services()
    return figures


BULK_USERS = 2000
BULK_ASSIGNMENTS = 5  # 10,000 records, all written in the same millisecond


async def bulk(bench: Bench, scale: float) -> dict[str, Any]:
    """HR assigns a course to everyone: an account of 2,000 users × 5 assignments read
    through its feed (`strategy: account`, every 10 s, the default 60 s overlap) on a
    1,000/min key, whose 10,000 records are all changed with one `updated_at`, then nothing
    more. Each feed read and its pages, over the overlap and three reads more: the bulk is
    read again while the window still reaches back to its stamp, then one page a read
    (target: within `overlap` plus one interval of the bulk). `--scale` shrinks the users
    and the overlap (at least 5 s). The baseline is seeded, as in `reach`."""
    users = user_ids(_n(BULK_USERS, scale, 20))
    overlap = max(5.0, REACH_OVERLAP * scale)
    interval = REACH_ACCOUNT_INTERVAL
    budget = 1000
    lms, received = bench.lms, bench.received
    seed_users(lms, len(users), BULK_ASSIGNMENTS)
    await store_baselines(PollStore(bench.redis), lms, users, spread_ms=None)
    await store_feed_state(bench.redis, ACCOUNT, int(time.time() * 1000))
    config = bench.service_config(users, budget=budget, events=["assignment.updated"])
    config["accounts"][0]["strategy"] = "account"
    config["polling"] |= {"account_interval": f"{interval:g}s", "overlap": f"{overlap:g}s"}
    await bench.start_services(config)

    async def read_once() -> bool:
        return await bench.total(FEED_READS) >= 1

    await _wait(read_once, 120, "the first feed read")
    received.track_changes = True
    stamp = lms.now_iso()
    at = time.time()
    for user_id, records in lms.accounts[ACCOUNT].items():
        for assignment_id, record in records.items():
            progress = (record.get("progress") or 0) % 99 + 1
            lms.update_assignment(
                ACCOUNT, user_id, assignment_id, progress=progress, updated_at=stamp
            )
    await asyncio.sleep(max(0.0, at + overlap + 3.5 * interval - time.time()))
    reads = _reads_after(bench, at)
    # the reads that read the bulk again, then the first of one page
    again = max((n for n, (_, pages) in enumerate(reads) if pages > 1), default=-1) + 1
    back = reads[again][0] if again < len(reads) else None
    delivered = sum(1 for (_, updated_at) in received.changes if updated_at == stamp)
    bench.stop_services()
    return {
        "users": len(users),
        "records_in_bulk": len(users) * BULK_ASSIGNMENTS,
        "budget_per_minute": budget,
        "account_interval_seconds": interval,
        "overlap_seconds": overlap,
        # (seconds after the bulk, pages) of each feed read
        "reads": [[round(t, 1), pages] for t, pages in reads],
        "reads_of_the_bulk": again,
        "one_page_a_read_after_seconds": None if back is None else round(back, 1),
        "target_seconds": overlap + interval,
        "pages_per_read_at_end": reads[-1][1] if reads else None,
        "bulk_undelivered": len(users) * BULK_ASSIGNMENTS - delivered,
    }


def _reads_after(bench: Bench, at: float) -> list[tuple[float, int]]:
    """Each feed read that started after `at`: when (seconds after it) and its pages."""
    reads: list[tuple[float, int]] = []
    for request in bench.lms.requests:
        if request.path != ACCOUNT_ASSIGNMENTS_PATH or request.time < at:
            continue
        if "next" not in request.query:
            reads.append((request.time - at, 1))
        elif reads:
            reads[-1] = (reads[-1][0], reads[-1][1] + 1)
    return reads


ADAPTIVE_USERS = 3000
ADAPTIVE_ASSIGNMENTS = 5
# The 5-minute cadence ten times faster, so a run covers many intervals: the cadence rule is
# scale-free (rates count and fade over RATE_MEMORY intervals, the bounds are multiples of
# the plan's interval, min_interval is scaled alike), so waits in intervals transfer to
# 5 minutes. What does not scale: the plan is derived every 30 s (one interval here, a tenth
# at 5 minutes) and the fixed costs of a poll and a delivery, which the figures split off.
ADAPTIVE_INTERVAL = 30.0
FIVE_MINUTES = 300.0
ADAPTIVE_MIN_INTERVAL = 0.1  # of the interval: 30 s at 5 minutes
ADAPTIVE_CHANGES = 0.05  # changes per user per interval: 150 an interval among 3,000 users
ADAPTIVE_BUSY = 0.1  # of the users, who make
ADAPTIVE_BUSY_SHARE = 0.9  # of the changes
# intervals of warm-up (changes flow, not measured: the adaptive cadence learns the users'
# rates, which fade over RATE_MEMORY = 12 intervals), then measured
ADAPTIVE_WARM_UP, ADAPTIVE_WINDOW = 12, 4


async def adaptive(bench: Bench, scale: float) -> dict[str, Any]:
    """3,000 users on a budget that polls each one every interval uniformly; 10% of them make
    90% of the changes (Zipf among them), the rest rarely change. The same users and the same
    changes, at the same moments, for `adaptive: false` and `adaptive: true` side by side
    (two worlds, each its own Redis, simulator and receiver, so they share only the machine):
    change → webhook latency (mean, p95), requests a minute against the budget, 429s.

    Time runs ten times faster than at 5 minutes (a 30 s interval, min_interval 3 s): a
    warm-up of ADAPTIVE_WARM_UP intervals (not measured), then ADAPTIVE_WINDOW measured.
    Each user's baseline is seeded in Redis (as the poll would leave it, with its weight for
    `adaptive`), due within the first interval. `--scale` shrinks the users and the interval
    alike (the same polls a second, the same changes per user and interval)."""
    interval = ADAPTIVE_INTERVAL * max(scale, 0.1)
    minimum = interval * ADAPTIVE_MIN_INTERVAL
    users = user_ids(_n(ADAPTIVE_USERS, scale, 100))
    per_user = ADAPTIVE_ASSIGNMENTS
    # HEADROOM of the key is planned: this budget plans exactly one poll a user an interval
    budget = math.ceil(len(users) * 60.0 / interval / HEADROOM)
    per_second = ADAPTIVE_CHANGES * len(users) / interval
    warm_up, window = ADAPTIVE_WARM_UP * interval, ADAPTIVE_WINDOW * interval
    serials, busy = skewed_changes(
        random.Random(11),
        len(users),
        per_user,
        round(per_second * (warm_up + window)),
        ADAPTIVE_BUSY,
        ADAPTIVE_BUSY_SHARE,
    )
    lead = round(per_second * warm_up)
    figures: dict[str, Any] = {
        "users": len(users),
        "busy_users": len(busy),
        "budget_per_minute": budget,
        "planned_per_minute": round(budget * HEADROOM, 1),
        "interval_seconds": interval,
        "min_interval_seconds": round(minimum, 3),
        "idle_bound_seconds": IDLE_BOUND * interval,
        "changes_per_second": round(per_second, 3),
        "warm_up_seconds": warm_up,
        "window_seconds": window,
        "time_scale": f"1 s here = {FIVE_MINUTES / interval:g} s at a 5-minute interval",
    }
    async with twin(bench) as other:
        worlds = {"uniform": bench, "adaptive": other}
        seed_users(bench.lms, len(users), per_user, twins=[other.lms])
        for world in worlds.values():
            world.lms.set_rate_limit(budget)  # the simulator enforces the same budget
        await asyncio.gather(
            *(
                store_baselines(
                    PollStore(world.redis),
                    world.lms,
                    users,
                    spread_ms=int(interval * 1000),
                    adaptive=name == "adaptive",
                )
                for name, world in worlds.items()
            )
        )
        for name, world in worlds.items():
            config = world.service_config(users, budget=budget, interval=f"{interval:g}s")
            config["polling"] |= {"adaptive": name == "adaptive", "min_interval": f"{minimum:g}s"}
            await world.start_services(config)
            world.received.track_changes = True
        for name, world in worlds.items():
            await _wait(partial(_polled, world), 60, f"the {name} service's first poll")
        twins = [other.lms]
        await change_steadily(bench.lms, serials[:lead], per_user, per_second, twins)
        start = time.time()
        made = await change_steadily(bench.lms, serials[lead:], per_user, per_second, twins)
        end = time.time()

        # every change is told once the last one made to each record is (no later one is
        # made): a cheap check, as the simulators share this process with the check; `made`
        # is in the order the changes were made
        last = {change[0]: change for change in made}

        async def all_told() -> bool:
            return all(c in w.received.changes for w in worlds.values() for c in last.values())

        # the last changes' users are polled within the idle bound (then a little for the
        # delivery); one still waiting then counts as not delivered
        allowance = IDLE_BOUND * interval + max(2.0, interval / 6)
        with contextlib.suppress(TimeoutError):
            await _wait(all_told, end + allowance - time.time(), "every change")
        for name, world in worlds.items():
            figures[name] = _adaptive_figures(world, made, busy, (start, end), budget, interval)
        published = await other.redis.get(keys.BUDGET_PLAN)
        figures["adaptive"]["plan"] = json.loads(published)["adaptive"] if published else None
    for suffix, uniform, fast in (
        ("", figures["uniform"], figures["adaptive"]),
        ("_at_5_minutes", figures["uniform"]["at_5_minutes"], figures["adaptive"]["at_5_minutes"]),
    ):
        if uniform["mean_seconds"] and fast["mean_seconds"]:
            speedup = uniform["mean_seconds"] / fast["mean_seconds"]
            figures["mean_speedup" + suffix] = round(speedup, 3)
        if uniform["p95_seconds"] and fast["p95_seconds"]:
            figures["p95_ratio" + suffix] = round(fast["p95_seconds"] / uniform["p95_seconds"], 3)
    return figures


async def _polled(bench: Bench) -> bool:
    return await _polls(bench) >= 1


def first_news(
    made: dict[tuple[str, str], float], received: dict[tuple[str, str], float]
) -> dict[tuple[str, str], float]:
    """When each change made was first told: the first webhook carrying that version of the
    assignment or a later one. A record changed twice between two reads arrives only as its
    later version, which tells the earlier change too (the receiver learns the record's
    state as of then)."""
    versions: dict[str, list[tuple[datetime, float]]] = {}
    for (assignment_id, updated), at in received.items():
        moment = parse_iso(updated)
        if moment is not None:
            versions.setdefault(assignment_id, []).append((moment, at))
    told = {}
    for change in made:
        assignment_id, updated = change
        moment = parse_iso(updated)
        arrivals = [at for v, at in versions.get(assignment_id, ()) if moment and v >= moment]
        if arrivals:
            told[change] = min(arrivals)
    return told


def _mean(values: list[float]) -> float | None:
    """None when any is inf (a change not told within the run) or there are none."""
    return round(statistics.fmean(values), 3) if values and math.isfinite(sum(values)) else None


def _adaptive_figures(
    bench: Bench,
    made: dict[tuple[str, str], float],
    busy: set[str],
    window: tuple[float, float],
    budget: int,
    interval: float,
) -> dict[str, Any]:
    """One strategy's latencies over the changes made in `window`, its requests in it, its
    429s all along.

    Each latency is split at the first read of the change's user after it (the simulator's
    log): the wait for that read is the cadence's, and scales with the interval; the rest
    (the poll, the commit, the delivery, a loaded machine) does not. So the latency at
    5 minutes is estimated as the wait × 300 s / interval plus the rest."""
    start, end = window
    told = first_news(made, bench.received.changes)
    reads: dict[str, list[float]] = {}
    for r in bench.lms.requests:
        if r.status == 200 and r.user_id is not None:
            reads.setdefault(r.user_id, []).append(r.time)
    owner = {c: owner_of(int(c[0].removeprefix("a_")), ADAPTIVE_ASSIGNMENTS) for c in made}
    latency, wait, rest = {}, [], []
    for change, at in made.items():
        latency[change] = told[change] - at if change in told else math.inf
        user_reads = reads.get(owner[change], [])
        n = bisect.bisect_left(user_reads, at)
        read = user_reads[n] if n < len(user_reads) else math.inf
        wait.append(read - at)
        rest.append(latency[change] - wait[-1] if math.isfinite(read) else math.inf)
    ordered = sorted(latency.values())
    factor = FIVE_MINUTES / interval
    at_five = sorted(w * factor + r for w, r in zip(wait, rest, strict=True))
    in_window = [r for r in bench.lms.requests if start <= r.time < end]
    per_minute = len(in_window) / (end - start) * 60.0
    return {
        "mean_seconds": _mean(ordered),
        "p50_seconds": nearest_rank(ordered, 0.5),
        "p95_seconds": nearest_rank(ordered, 0.95),
        "max_seconds": round(ordered[-1], 3) if ordered and math.isfinite(ordered[-1]) else None,
        "changes": len(made),
        "undelivered": sum(1 for x in ordered if math.isinf(x)),
        # told only through a later version of the record: changed again before a read
        "told_by_a_later_version": sum(1 for c in told if c not in bench.received.changes),
        "busy_users_mean_seconds": _mean([x for c, x in latency.items() if owner[c] in busy]),
        "other_users_mean_seconds": _mean([x for c, x in latency.items() if owner[c] not in busy]),
        "read_wait_mean_seconds": _mean(wait),
        "read_wait_p95_seconds": nearest_rank(sorted(wait), 0.95),
        "read_to_webhook_mean_seconds": _mean(rest),
        "at_5_minutes": {
            "mean_seconds": _mean(at_five),
            "p95_seconds": nearest_rank(at_five, 0.95),
        },
        "requests_per_minute": round(per_minute, 1),
        "budget_used": round(per_minute / budget, 3),
        "busy_users_share_of_requests": round(
            sum(1 for r in in_window if r.user_id in busy) / max(1, len(in_window)), 3
        ),
        "throttled_429": sum(1 for r in bench.lms.requests if r.status == 429),
    }


TENANT_ACCOUNTS, TENANT_USERS, TENANT_ASSIGNMENTS = 300, 4, 5
TENANT_BUDGET = 1000  # a minute, for 300 accounts: the uniform plan needs 1,800
TENANT_INTERVAL = 10.0  # account_interval
TENANT_CHANGES = 3.0  # a second, for 300 accounts
TENANT_SLOW = 8.0  # seconds the slow account's provider takes to answer every request
# seconds at full scale: changes flow unmeasured, then measured, with the provider's 429s
# from TENANT_LIMITED_AT into the window, for TENANT_LIMITED
TENANT_WARM_UP, TENANT_WINDOW, TENANT_LIMITED_AT, TENANT_LIMITED = 60.0, 240.0, 90.0, 60.0


async def tenants(bench: Bench, scale: float) -> dict[str, Any]:
    """300 accounts × 4 users × 5 assignments on a 1,000/min key, every account read through
    its change feed at `account_interval: 10s` with `adaptive: true` (the uniform plan needs
    1,800 a minute). 10% of the accounts make 90% of the changes. One busy account's
    provider answers 429 (`provider_errors`, Retry-After 30) for a minute of the window;
    another busy account's answers every request after 8 s, all along. Both are reported
    apart, not among the busy or the healthy accounts.

    Each account's first read (a silent baseline) is not measured; changes flow for a
    warm-up, then a measured window. `--scale` shrinks the accounts, the key and the changes
    alike (the same oversubscription), and the times down to a 90 s window."""
    count = _n(TENANT_ACCOUNTS, scale, 30)
    budget = round(TENANT_BUDGET * count / TENANT_ACCOUNTS)
    per_second = TENANT_CHANGES * count / TENANT_ACCOUNTS
    warm_up = max(20.0, TENANT_WARM_UP * scale)
    window = max(90.0, TENANT_WINDOW * scale)
    limited_at = window * TENANT_LIMITED_AT / TENANT_WINDOW
    limited_for = window * TENANT_LIMITED / TENANT_WINDOW
    lms, received = bench.lms, bench.received
    accounts = seed_tenants(lms, count, TENANT_USERS, TENANT_ASSIGNMENTS)
    order, busy = skewed_accounts(
        random.Random(22),
        accounts,
        round(per_second * (warm_up + window)),
        ADAPTIVE_BUSY,
        ADAPTIVE_BUSY_SHARE,
    )
    limited, slow = sorted(busy)[:2]
    lms.faults.account_delays = {slow: TENANT_SLOW}
    lms.set_rate_limit(budget)  # the simulator enforces the key's budget
    base = bench.service_config([], budget=budget)
    config = tenant_config(base, accounts, TENANT_USERS, TENANT_INTERVAL)
    (process,) = await bench.start_services(config)

    async def baselined() -> bool:
        states = [keys.feed_state(t.account_id) for t in accounts]
        async with bench.redis.pipeline(transaction=False) as pipe:
            for key in states:
                pipe.hexists(key, "last_full_sync")
            return all(await pipe.execute())

    started = time.time()
    await _wait(baselined, 300, "every account's first read")
    baseline_seconds = time.time() - started
    received.track_changes = True
    lead = round(per_second * warm_up)
    early = await change_tenants(lms, order[:lead], per_second)
    cpu0, start = cpu_seconds(process.pid), time.time()
    changing = asyncio.create_task(change_tenants(lms, order[lead:], per_second))
    await asyncio.sleep(limited_at)
    minute = await provider_429s(lms, limited, limited_for)
    made = await changing
    cpu, end = cpu_seconds(process.pid) - cpu0, time.time()
    requests = [r for r in lms.requests if start <= r.time < end]

    async def all_told() -> bool:
        return made.keys() <= received.changes.keys()

    # a quiet account is read at least every max_account_interval (100 s)
    with contextlib.suppress(TimeoutError):
        await _wait(all_told, 10 * TENANT_INTERVAL + 30.0, "every change")
    published = await bench.redis.get(keys.BUDGET_PLAN)
    received.track_changes = False
    bench.stop_services()
    per_minute = len(requests) / (end - start) * 60.0
    figures: dict[str, Any] = {
        "accounts": count,
        "busy_accounts": len(busy),
        "budget_per_minute": budget,
        "uniform_needs_per_minute": round(count * 60.0 / TENANT_INTERVAL),
        "changes_per_second": round(per_second, 3),
        "warm_up_seconds": warm_up,
        "window_seconds": round(end - start, 1),
        "baseline_seconds": round(baseline_seconds, 1),
        "limited_account": limited,
        "slow_account": slow,
        "limited_seconds": [round(minute[0] - start, 1), round(minute[1] - start, 1)],
        "requests_per_minute": round(per_minute, 1),
        "budget_used": round(per_minute / budget, 3),
        "self_caused_429": sum(1 for r in lms.requests if r.fault == "rate_limited"),
        "provider_429": sum(1 for r in requests if r.fault == "provider_errors"),
        "service_cpu_share": round(cpu / (end - start), 3),
        "plan": json.loads(published) if published else None,
    }
    figures |= tenant_figures(made, received, requests, busy, (limited, slow), minute)
    figures["unexpected_changes_received"] = len(
        received.changes.keys() - made.keys() - early.keys()
    )
    return figures


def tenant_figures(
    made: dict[tuple[str, str], tuple[float, str]],
    received: Received,
    requests: list[RequestRecord],
    busy: set[str],
    special: tuple[str, str],
    minute: tuple[float, float],
) -> dict[str, Any]:
    """Change → webhook by group (busy, quiet, the healthy ones in and outside the limited
    minute, the limited and the slow account), per account, and exactly once."""
    limited, slow = special
    latency = {c: received.changes.get(c, math.inf) - at for c, (at, _) in made.items()}
    account = {c: a for c, (_, a) in made.items()}

    def group(keep: Callable[[tuple[str, str]], bool]) -> dict[str, Any]:
        values = sorted(latency[c] for c in made if keep(c))
        return {
            "changes": len(values),
            "p50_seconds": nearest_rank(values, 0.5),
            "p99_seconds": nearest_rank(values, 0.99),
        }

    def healthy(c: tuple[str, str]) -> bool:
        return account[c] not in special

    def in_minute(c: tuple[str, str]) -> bool:
        return minute[0] <= made[c][0] < minute[1]

    by_account: dict[str, list[float]] = {}
    for c, value in latency.items():
        by_account.setdefault(account[c], []).append(value)
    p99s = {a: nearest_rank(sorted(v), 0.99) for a, v in by_account.items()}
    others = [p for a, p in p99s.items() if a != limited]
    reads: Counter[str] = Counter(  # first pages: one a read
        str(r.account_id)
        for r in requests
        if r.path == ACCOUNT_ASSIGNMENTS_PATH and "next" not in r.query
    )
    seconds = (requests[-1].time - requests[0].time) if requests else 0.0
    quiet_accounts = {a for a in reads if a not in busy}
    healthy_in, healthy_out = (
        group(lambda c: healthy(c) and in_minute(c)),
        group(lambda c: healthy(c) and not in_minute(c)),
    )
    return {
        "busy": group(lambda c: healthy(c) and account[c] in busy),
        "quiet": group(lambda c: account[c] not in busy),
        "healthy_during_limited_minute": healthy_in,
        "healthy_outside_it": healthy_out,
        "healthy_p99_difference_seconds": (
            round(healthy_in["p99_seconds"] - healthy_out["p99_seconds"], 3)
            if healthy_in["p99_seconds"] is not None and healthy_out["p99_seconds"] is not None
            else None
        ),
        "limited": group(lambda c: account[c] == limited),
        "slow": group(lambda c: account[c] == slow),
        # None: some account's p99 change was not delivered within the run
        "worst_account_p99_seconds": (
            None if None in others else max((p for p in others if p is not None), default=None)
        ),
        "busy_read_every_seconds": _every(seconds, [reads[a] for a in busy - set(special)]),
        "quiet_read_every_seconds": _every(seconds, [reads[a] for a in quiet_accounts]),
        "changes_made": len(made),
        "undelivered": sum(1 for x in latency.values() if math.isinf(x)),
        "webhooks_received_twice": sum(1 for n in received.deliveries.values() if n > 1),
    }


def _every(seconds: float, reads: list[int]) -> float | None:
    """How often an account of these was read, on average over them."""
    total = sum(reads)
    return round(seconds * len(reads) / total, 2) if total else None


SCENARIOS: dict[str, Scenario] = {
    "budget": upstream_budget,
    "idle": idle_cost,
    "detection": detection,
    "delivery": delivery,
    "burst": burst,
    "latency": latency,
    "footprint": footprint,
    "scale_out": scale_out,
    "reach": reach,
    "bulk": bulk,
    "adaptive": adaptive,
    "log_memory": log_memory,
    "takeover": takeover,
    "tenants": tenants,
}
