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

from service.changes.detect import Watermark, updated_after
from service.config import Settings
from service.errors import StaleLease
from service.metrics import Metrics, report_future_stamps
from service.reading.plan import Cadence, ConfiguredCadence, next_due
from service.store import keys
from service.store.feeds import FeedStore
from service.store.leases import Lease
from service.store.read_state import ReadState
from service.store.users import TrackedUsers
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("discovery")

# two complete listings that each leave out more than half of the users agree when the
# users both leave out are this share of the larger of their two sets
AGREEMENT = 0.9


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
        interval = self.cadence.listing_interval
        next_score = int(next_due(lease.due_at, lease.claimed_at, interval, self.clock()) * 1000)
        async with lease.lock:
            committed = await self.store.commit_listing(
                account_id,
                token=lease.token,
                next_score=next_score,
                state=done,
                add=add,
                found_ms=_found_ms(found, started),
                drop=drop,
            )
            if not committed:
                raise StaleLease(f"listing lease on {account_id} was taken over")
            lease.token, lease.ended = next_score, True
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
        """When a complete listing leaves out more than half of the users listed before (an
        upstream answering `data: []` on a bad day, a provider cut short), it forgets
        nobody until a second complete listing, at least half an interval later, agrees
        (both leave out nearly the same users: AGREEMENT of the larger set), and then only
        the users both left out: forgotten users' changes would be lost, and they would
        come back baselined silently. Listings that disagree (an empty answer, then one cut
        short) hold again, from the later one. Returns when the first such listing
        ran (held now; 0: not held, the hold if any ends; None: not a complete listing, as
        it was) and the users to forget."""
        if not full:
            return None, drop
        if len(drop) * 2 <= listed:
            return 0, drop
        now_ms = int(now * 1000)
        first = state.mass_drop_ms or 0
        interval = self.cadence.listing_interval
        if first and now_ms - first >= interval * 500:
            held = await self.store.held_drop(account_id)
            agreed = [user for user in drop if user in held]
            if agreed and len(agreed) >= AGREEMENT * max(len(held), len(drop)):
                log.warning("listing_drop_confirmed", account_id=account_id, left=len(agreed))
                return 0, agreed
            first = 0  # they disagree (or the first one's set ran out): this one is a first
        if not first:  # the users a second listing must agree on
            await self.store.hold_drop(account_id, drop, interval * 10 + 60)
        dropping = len(drop)
        self.metrics.listed_users.labels("held").inc(dropping)
        log.warning(
            "listing_drop_held",
            account_id=account_id,
            listed=listed,
            missing=dropping,
            until="a second complete listing agrees",
        )
        return first or now_ms, drop


def _found_ms(served_at: datetime | None, started: float) -> int:
    """When this listing found its new users, on the upstream's clock (which stamps their
    records), or ours when it gave none. An HTTP date drops the fraction of its second: the
    listing may have been answered up to a second later."""
    if served_at is None:
        return int(started * 1000)
    return int(served_at.timestamp() * 1000) + 999
