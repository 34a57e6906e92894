"""`users: all`: an account's user listing (`GET /unified/lms/users`), read again every
`discovery_interval` (`filter[updated_after]` in between, a complete listing every
`full_resync_interval`).

A user newly listed is tracked from then on and baselined like a user added at run time. A
user no longer listed (missing from a complete listing, or listed with `active: false`)
stops being tracked and its snapshots and state are forgotten, without `removed` events.
A listing that fails or is cut short changes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from service.changes.detect import Watermark, found_at_ms, updated_after
from service.config import Settings
from service.errors import StaleLease
from service.mass_drop import decide_drop, is_mass_drop
from service.metrics import Metrics, report_future_stamps
from service.reading.plan import Cadence, ConfiguredCadence, next_due
from service.store import keys
from service.store.feeds import FeedStore
from service.store.leases import Lease
from service.store.outcome import EndLease
from service.store.read_state import ReadState
from service.store.users import TrackedUsers
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("discovery")


@dataclass(slots=True)
class ListingResult:
    full: bool = False
    pages: int = 0
    changes: int = 0  # users that joined or left
    events: int = 0  # never any: joining and leaving are not assignment events
    joined: int = 0
    left: int = 0
    held: int = 0  # users a complete listing left out, kept until a second one agrees


class UserListing:
    def __init__(
        self,
        store: FeedStore,
        users: TrackedUsers,
        client: StackOneClient,
        settings: Settings,
        metrics: Metrics,
        *,
        on_changed: Callable[[], None] | None = None,
        cadence: Cadence | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cadence = cadence or ConfiguredCadence.of(settings.polling)
        self.store = store
        self.users = users
        self.client = client
        self.settings = settings
        self.metrics = metrics
        self.on_changed = on_changed  # the tracked users changed: schedules follow
        self.clock = clock

    async def poll(self, lease: Lease) -> ListingResult:
        """Read the account's user listing once; raises UpstreamError (nothing changed)."""
        account_id, polling = lease.account_id, self.settings.polling
        started = self.clock()
        state = await self.store.listing_state(account_id)
        full = state.complete_read_due(started, self.cadence.full_resync_interval)
        watermark = from_epoch(state.watermark_ms / 1000) if state.watermark_ms else None
        since = None if full or watermark is None else updated_after(watermark, polling.overlap)
        result = ListingResult(full=full)
        active: set[str] = set()
        inactive: set[str] = set()
        stamps = Watermark(watermark)
        skipped = 0
        found: datetime | None = None  # the upstream's clock when the listing began
        async for page in self.client.user_pages(account_id, since):
            found = found or page.served_at
            result.pages += 1
            active.update(page.active)
            inactive.update(page.inactive)
            stamps.see(page.updated_at, page.served_at or from_epoch(started))
            if page.skipped:
                skipped += page.skipped
                self.metrics.records_skipped.labels("user_without_id").inc(page.skipped)
                log.warning("users_skipped", account_id=account_id, count=page.skipped)
        inactive -= active  # listed twice (a page shift): active wins, it is seen again later
        listed = await self.store.listed(account_id)
        add = sorted(active - listed)
        # a user skipped may be one we know: such a listing cannot tell who left
        gone = (listed - active) if full and not skipped else (listed & inactive)
        # a user added through the admin API stays tracked, its state and snapshots kept
        runtime = {
            u for a, u in map(keys.parse_user_member, await self.users.runtime()) if a == account_id
        }
        drop = sorted(gone - runtime)
        mass_drop, drop = await self._mass_drop(account_id, state, drop, len(listed), started, full)
        if mass_drop:  # held: nobody leaves, and the next listing is complete again
            result.held, full = len(drop), False
            drop = []
        report_future_stamps(self.metrics, "users", stamps, account_id=account_id)
        done = replace(
            ReadState.after_read(stamps.newest, int(started * 1000), full=full),
            mass_drop_ms=mass_drop,
        )
        found_ms = found_at_ms(found, started)
        if state.last_full_sync_ms is None:  # a discovered account's users were there then
            found_ms = min(found_ms, await self.users.accounts.found_ms(account_id) or found_ms)
        interval = self.cadence.listing_interval
        due = next_due(lease.due_at, lease.claimed_at, interval, self.clock())
        async with lease.lock:
            committed = await self.store.commit_listing(
                account_id,
                token=lease.token,
                outcome=EndLease(due),
                state=done,
                add=add,
                found_ms=found_ms,
                drop=drop,
            )
            if not committed:
                raise StaleLease(f"listing lease on {account_id} was taken over")
            lease.ended = True
        result.joined, result.left = len(add), len(drop)
        result.changes = len(add) + len(drop)
        if result.changes:
            self.metrics.listed_users.labels("joined").inc(len(add))
            self.metrics.listed_users.labels("left").inc(len(drop))
            log.info("users_listed", account_id=account_id, joined=len(add), left=len(drop))
            if self.on_changed is not None:
                self.on_changed()
        return result

    async def _mass_drop(
        self,
        account_id: str,
        state: ReadState,
        drop: list[str],
        listed: int,
        now: float,
        full: bool,
    ) -> tuple[int | None, list[str]]:
        """The guard against a listing that suddenly leaves out most users (service/
        mass_drop.py), a second complete listing agreeing at least half an interval later.
        Returns when the first such listing ran (held now; 0: not held, the hold if any
        ends; None: not a complete listing, as it was) and the users to forget."""
        interval = self.cadence.listing_interval
        wanted = full and is_mass_drop(drop, listed) and bool(state.mass_drop_ms)
        decision = decide_drop(
            drop,
            listed,
            full=full,
            first_ms=state.mass_drop_ms,
            held=await self.store.held_drop(account_id) if wanted else set(),
            now_ms=int(now * 1000),
            agree_after_ms=int(interval * 500),
        )
        if decision.confirmed:
            log.warning("listing_drop_confirmed", account_id=account_id, left=len(decision.drop))
        if decision.hold_new:  # the users a second listing must agree on
            await self.store.hold_drop(account_id, drop, interval * 10 + 60)
        if decision.held:
            self.metrics.listed_users.labels("held").inc(len(drop))
            log.warning(
                "listing_drop_held",
                account_id=account_id,
                listed=listed,
                missing=len(drop),
                until="a second complete listing agrees",
            )
        return decision.mass_drop_ms, decision.drop
