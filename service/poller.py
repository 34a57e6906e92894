"""One user's poll: read upstream, detect against the snapshots, commit atomically."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import structlog

from service.config import EndpointSettings, Settings
from service.detect import Change, detect, detect_removed, next_watermark, updated_after
from service.errors import StaleLease
from service.metrics import Metrics
from service.store.polls import Outbox, PollStore
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("poller")

# Changes held in memory before an intermediate commit; the watermark only moves at the end.
FLUSH_EVERY = 500


@dataclass
class Lease:
    """A claimed user. `token` (the lease expiry, ms) changes whenever the lease is extended."""

    member: str
    account_id: str
    user_id: str
    token: int
    claimed_at: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(slots=True)
class PollResult:
    full: bool = False
    pages: int = 0
    records: int = 0
    changes: int = 0
    events: int = 0
    without_id: int = 0


def route(
    outbox: Outbox, change: Change, endpoints: Iterable[EndpointSettings], due_ms: int
) -> None:
    """Add a change to the outbox with each event queued for every endpoint that wants it."""
    outbox.changes.append(change)
    for event in change.events:
        body: str | None = None
        for endpoint in endpoints:
            if endpoint.wants(event["type"], event["data"]["account_id"]):
                body = body or json.dumps(event, separators=(",", ":"))
                outbox.events.setdefault(endpoint.id, []).append((event["id"], body, due_ms))


class Poller:
    def __init__(
        self,
        store: PollStore,
        client: StackOneClient,
        settings: Settings,
        metrics: Metrics,
        *,
        lease_seconds: float,
        on_committed: Callable[[set[str]], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.lease_seconds = lease_seconds
        self.on_committed = on_committed
        self.clock = clock

    async def poll(self, lease: Lease) -> PollResult:
        """Poll one user; raises UpstreamError (nothing committed past the last flush)."""
        polling = self.settings.polling
        account_id, user_id = lease.account_id, lease.user_id
        started = self.clock()
        now = from_epoch(started)
        state = await self.store.load_user(account_id, user_id)
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        last_full = state.last_full_sync_ms
        full = (
            watermark is None
            or last_full is None
            or started - last_full / 1000 >= polling.full_resync_interval
        )
        emit = state.baselined or polling.emit_on_first_sync
        snapshots = state.snapshots
        result = PollResult(full=full)
        outbox = Outbox()
        seen: set[str] = set()
        updated_values: list[object] = []
        now_ms = int(started * 1000)

        pages = self.client.pages(
            account_id, user_id, None if full else updated_after(watermark, polling.overlap)
        )
        async for page in pages:
            result.pages += 1
            result.records += len(page.records)
            if page.without_id:
                result.without_id += page.without_id
                self.metrics.records_skipped.labels("missing_id").inc(page.without_id)
                log.warning(
                    "record_without_id_skipped",
                    account_id=account_id,
                    user_id=user_id,
                    count=page.without_id,
                )
            for record in page.records:
                assignment_id = str(record["id"])
                seen.add(assignment_id)
                updated_values.append(record.get("updated_at"))
                change = detect(
                    account_id,
                    user_id,
                    assignment_id,
                    snapshots.get(assignment_id),
                    record,
                    now=now,
                    emit=emit,
                )
                if change is not None:
                    assert change.snapshot is not None
                    snapshots[assignment_id] = change.snapshot
                    route(outbox, change, self.settings.endpoints, now_ms)
            if len(outbox) >= FLUSH_EVERY:
                await self._commit(lease, outbox, result, final_state=None)
                outbox = Outbox()

        if full:
            # Only reached after every page was read without error: removals are safe now.
            for assignment_id in sorted(set(snapshots) - seen):
                gone = detect_removed(
                    account_id, user_id, assignment_id, snapshots[assignment_id], now=now
                )
                route(
                    outbox,
                    gone if emit else Change(assignment_id, None),
                    self.settings.endpoints,
                    now_ms,
                )
        new_watermark = next_watermark(watermark, updated_values, poll_started=now)
        final_state = {
            "baselined": "1",
            "failures": "0",
            "last_error": "",
            "last_poll": str(now_ms),
        }
        if new_watermark is not None:
            final_state["watermark"] = str(int(new_watermark.timestamp() * 1000))
        if full:
            final_state["last_full_sync"] = str(now_ms)
        await self._commit(lease, outbox, result, final_state=final_state)
        return result

    def next_due_ms(self, lease: Lease) -> int:
        """Keep the cadence of the claim, not of the poll's end; never in the past."""
        due = max(lease.claimed_at + self.settings.polling.interval, self.clock())
        return int(due * 1000)

    async def _commit(
        self, lease: Lease, outbox: Outbox, result: PollResult, final_state: dict[str, str] | None
    ) -> None:
        async with lease.lock:
            if final_state is None:  # intermediate: keep the lease, extended
                next_score = int((self.clock() + self.lease_seconds) * 1000)
            else:
                next_score = self.next_due_ms(lease)
            committed = await self.store.commit(
                lease.account_id,
                lease.user_id,
                outbox,
                token=lease.token,
                next_score=next_score,
                state=final_state,
            )
            if not committed:
                raise StaleLease(f"lease on {lease.member} was taken over")
            lease.token = next_score
        result.changes += len(outbox.changes)
        for change in outbox.changes:
            for event in change.events:
                result.events += 1
                self.metrics.events.labels(event["type"]).inc()
        if outbox.events and self.on_committed:
            self.on_committed(set(outbox.events))
