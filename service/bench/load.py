"""Building the benchmark's load: simulator users in bulk, queued events, mass changes.

Everything the service reads goes through its own code paths (the simulator's HTTP API, the
store's commit), so a figure measures what a deployment would run.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import random
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from service.changes.detect import Snapshot, detect
from service.changes.outbox import Outbox, route_events
from service.config import EndpointSettings
from service.reading.plan import assignment_activity, user_weight
from service.sim.lms import SimLMS
from service.sim.records import remote_user_id
from service.store import keys
from service.store.outcome import EndLease
from service.store.polls import PollStore
from service.store.read_state import ReadState

ACCOUNT = "acc_1"


def user_ids(count: int) -> list[str]:
    return [f"u_{n}" for n in range(1, count + 1)]


def record_shapes(count: int) -> list[dict[str, Any]]:
    """`count` (at most 50) realistic records from the simulator's own seed: mixed statuses,
    due dates, custom fields."""
    templates = SimLMS()
    templates.seed(1, 1, min(count, 50))
    return list(templates.accounts["acc_1"]["u_1"].values())


def seed_users(lms: SimLMS, users: int, assignments: int, twins: Sequence[SimLMS] = ()) -> None:
    """`users` users with `assignments` realistic records each, quickly: user u_<k> holds
    a_<(k-1)*assignments+1> .. a_<k*assignments> (`owner_of` inverts it). `twins` get the
    very same records (the shapes' dates follow the clock, so seeding each would not).

    The record shapes are cloned with fresh ids and written straight into the simulator's
    accounts (its account-wide order catches up at the next walk), so a million records take
    seconds, not minutes.
    """
    shapes = record_shapes(assignments)
    account = lms.accounts.setdefault(ACCOUNT, {})
    serial = 0
    for user_id in user_ids(users):
        records = account.setdefault(user_id, {})
        remote_user = remote_user_id(user_id)  # the shapes carry u_1's
        for n in range(assignments):
            serial += 1
            record = dict(shapes[n % len(shapes)])
            record["id"] = f"a_{serial}"
            record["user_id"] = user_id
            record["remote_user_id"] = remote_user
            records[record["id"]] = record
    for twin in twins:
        twin.accounts[ACCOUNT] = copy.deepcopy(account)


def owner_of(serial: int, assignments: int) -> str:
    """The user `seed_users(..., assignments)` gave a_<serial>."""
    return f"u_{(serial - 1) // assignments + 1}"


def start_every_record(lms: SimLMS) -> None:
    """Every record in progress (not completed), as a course under way."""
    for account_id, users in lms.accounts.items():
        for user_id, records in users.items():
            for assignment_id in records:
                lms.progress(account_id, user_id, assignment_id, 50)


def complete_every_record(lms: SimLMS) -> int:
    """Every record completed at once (one `assignment.completed` each)."""
    completed = 0
    for account_id, users in lms.accounts.items():
        for user_id, records in users.items():
            for assignment_id in list(records):
                lms.progress(account_id, user_id, assignment_id, 100)
                completed += 1
    return completed


def change_every_record(lms: SimLMS) -> int:
    """Move every record's progress on (a real change: progress and updated_at differ)."""
    changed = 0
    for account_id, users in lms.accounts.items():
        for user_id, records in users.items():
            for assignment_id, record in list(records.items()):
                pct = (record.get("progress") or 0) % 99 + 1
                lms.update_assignment(account_id, user_id, assignment_id, progress=pct)
                changed += 1
    return changed


async def poll_everyone_now(redis: Redis, users: list[str], timeout: float = 30.0) -> None:
    """What `POST /admin/poll` does for one user, for all of them at once (once the service
    has scheduled them all: it schedules its config's users just after it starts)."""
    deadline = time.monotonic() + timeout
    while await redis.zcard(keys.POLL_DUE) < len(users):
        if time.monotonic() > deadline:
            raise TimeoutError("the service did not schedule every user")
        await asyncio.sleep(0.05)
    await redis.zadd(keys.POLL_DUE, {keys.user_member(ACCOUNT, u): 0 for u in users}, xx=True)


def _changed_pair(
    shape: dict[str, Any], serial: int, *, complete: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A record before and after a change: its progress moves (`assignment.updated` and
    `assignment.progress_changed`), or with `complete` it is completed (those two, then
    `assignment.status_changed` and `assignment.completed`)."""
    before = copy.deepcopy(shape)
    before["id"] = f"a_{serial}"
    after = {**before, "progress": (before.get("progress") or 0) % 99 + 1}
    after["updated_at"] = datetime.now(UTC).isoformat(timespec="milliseconds")
    if complete:
        before["status"] = {"value": "in_progress", "source_value": "InProgress"}
        before["progress"], before["completed_at"] = 50, None
        after["status"] = {"value": "completed", "source_value": "Completed"}
        after["progress"], after["completed_at"] = 100, after["updated_at"]
    return before, after


async def queue_events(
    store: PollStore,
    endpoint: EndpointSettings,
    count: int,
    batch: int = 500,
    *,
    every_event: bool = False,
) -> int:
    """Queue `count` real change events (as detection builds them) for `endpoint`: the
    first event of each change, or with `every_event` all of them, as detection emits them
    (a change in four a completion: 4 events, the others a progress change: 2). Returns how
    many were queued (with `every_event` the last change may pass `count` by up to 3)."""
    shapes = record_shapes(20)
    now = datetime.now(UTC)
    queued = serial = 0
    while queued < count:
        outbox = Outbox()
        for _ in range(batch):
            if queued >= count:
                break
            complete = every_event and serial % 4 == 3
            before, after = _changed_pair(shapes[serial % len(shapes)], serial, complete=complete)
            serial += 1
            change = detect(
                ACCOUNT, "u_bench", before["id"], Snapshot(1, before), after, now=now, emit=True
            )
            assert change is not None
            events = change.events if every_event else change.events[:1]
            route_events(
                events, [endpoint], int(now.timestamp() * 1000), outbox.events, change.record_id
            )
            queued += len(events)
        await store.commit(ACCOUNT, "u_bench", outbox, token=None)
    return queued


async def store_baselines(
    store: PollStore,
    lms: SimLMS,
    users: list[str],
    spread_ms: int | None,
    concurrency: int = 32,
    *,
    adaptive: bool = False,
) -> None:
    """Commit every user's snapshots with the poller's own commit, as a baseline poll would
    (the user is marked baselined, so its next read, a poll or the feed, sends events).
    Each user is due within `spread_ms`; None leaves the poll schedule alone, for users an
    account feed reads. `adaptive`: also the activity and poll weight an `adaptive: true`
    baseline poll leaves (no change yet; the assignments as read), so a user that changes
    later is not weighed against users that never had their activity looked at."""
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    gate = asyncio.Semaphore(concurrency)
    rng = random.Random(7)

    async def one(user_id: str) -> None:
        async with gate:
            outbox = Outbox()
            for assignment_id, record in lms.accounts[ACCOUNT][user_id].items():
                change = detect(ACCOUNT, user_id, assignment_id, None, record, now=now, emit=False)
                assert change is not None
                outbox.changes.append(change)
            state = ReadState(watermark_ms=now_ms, baselined=True, last_full_sync_ms=now_ms)
            weight = None
            if adaptive:
                in_progress, due_date = assignment_activity(
                    c.snapshot.record for c in outbox.changes
                )
                weight = user_weight(0.0, in_progress, due_date, now_ms)
                state = replace(
                    state,
                    change_rate=0.0,
                    in_progress=in_progress,
                    next_due_date_ms=due_date or 0,
                )
            due = None
            if spread_ms is not None:
                due = EndLease((now_ms + rng.randrange(0, spread_ms)) / 1000)
            snapshots = {c.record_id: c.snapshot for c in outbox.changes}
            await store.commit(
                ACCOUNT,
                user_id,
                outbox,
                token=None,
                outcome=due,
                state=state,
                snapshots=snapshots,
                weight=weight,
            )

    await asyncio.gather(*(one(u) for u in users))


async def store_feed_state(redis: Redis, account_id: str, at_ms: int) -> None:
    """The feed state a complete read of the account at `at_ms` leaves: its next read is
    incremental (from the watermark) and no full read is due for `full_resync_interval`."""
    state = ReadState(watermark_ms=at_ms, last_full_sync_ms=at_ms, last_poll_ms=at_ms)
    pairs = [part for pair in state.encode().items() for part in pair]
    await redis.hset(keys.feed_state(account_id), items=pairs)


async def change_steadily(
    lms: SimLMS,
    serials: list[int],
    assignments: int,
    per_second: float,
    twins: Sequence[SimLMS] = (),
) -> dict[tuple[str, str], float]:
    """Change the assignments a_<serial> (as `seed_users` made them) one by one at
    `per_second`, paced on the clock so slow steps do not slow the rate down. `twins`,
    simulators seeded alike, get each change at the same moment with the same updated_at,
    so one set of changes serves services running side by side.

    Returns each change, as (assignment id, its new updated_at), with when the simulator
    applied it. A serial may appear again, but a record changed twice between two reads is
    one change to any poller: the earlier one never arrives as itself, only through the later
    one (`first_news` counts it so).
    """
    made: dict[tuple[str, str], float] = {}
    start = time.time()
    for n, serial in enumerate(serials):
        wait = start + n / per_second - time.time()
        if wait > 0:
            await asyncio.sleep(wait)
        user_id, assignment_id = owner_of(serial, assignments), f"a_{serial}"
        progress = lms.accounts[ACCOUNT][user_id][assignment_id].get("progress") or 0
        applied = time.time()
        record = lms.update_assignment(ACCOUNT, user_id, assignment_id, progress=progress % 99 + 1)
        for other in twins:
            other.update_assignment(
                ACCOUNT,
                user_id,
                assignment_id,
                progress=record["progress"],
                updated_at=record["updated_at"],
            )
        made[(assignment_id, record["updated_at"])] = applied
    return made


def skewed_changes(
    rng: random.Random,
    users: int,
    assignments: int,
    count: int,
    busy: float,
    busy_share: float,
) -> tuple[list[int], set[str]]:
    """`count` changes (serials for `change_steadily`) among `users` users seeded with
    `assignments` each: a `busy` fraction of the users, picked at random, make `busy_share`
    of the changes, the k-th busiest of them in proportion to 1/k (Zipf); every other user
    is as likely as any other to make the rest. A user's changes go round its assignments,
    so one record is changed again only after all of the user's others.

    Returns the serials and the busy users."""
    everyone = list(range(1, users + 1))
    rng.shuffle(everyone)
    split = max(1, round(users * busy))
    hot, rest = everyone[:split], everyone[split:]
    zipf = list(itertools.accumulate(1.0 / rank for rank in range(1, len(hot) + 1)))
    turn: dict[int, int] = {}  # user → the assignment it changed last
    serials = []
    for _ in range(count):
        if rest and rng.random() >= busy_share:
            user = rng.choice(rest)
        else:
            user = rng.choices(hot, cum_weights=zipf)[0]
        turn[user] = (turn.get(user, rng.randrange(assignments)) + 1) % assignments
        serials.append((user - 1) * assignments + turn[user] + 1)
    return serials, {f"u_{user}" for user in hot}
