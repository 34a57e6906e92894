"""`account_discovery`: the key's linked accounts (`GET /accounts`), listed again every
`account_discovery.interval`, decide which accounts are read besides the config's.

Every listing is complete (there is no `updated_after`). With `origin_owner_ids`, one
listing per owner (filtered upstream, so a key with thousands of other customers' accounts
pays for the owners' pages only); `providers` is asked for as well. Upstream filters are not
trusted: each account listed is checked against both again here.

One atomic commit (store/lua/commit_accounts.lua) records the accounts found (with when they
were found active: their users' baselines absorb nothing stamped later), those changed
(status, reasons, provider...), those missing and those unlinked, and moves the counter every
process's AccountDirectory watches. An account a complete listing leaves out is missing: no
longer read, its state kept, since `GET /accounts` is paged by number and an account
unlinked on an earlier page while the listing runs shifts a later one out of it. Listed
again, it is compared with its snapshots as usual; left out by a second complete listing at
least an interval later too, it is unlinked: its state is then forgotten in batches (a crash
midway leaves it queued; the next listing finishes). A listing that fails changes nothing;
one that leaves out more than half of the known accounts at once forgets nobody until a
second complete listing, at least an interval later, agrees (service/mass_drop.py).

`NotLmsCheck` wraps the readers of discovered accounts: an account whose first read answers
400/404/501 is another category's (an HRIS, say) and is skipped for a day, then tried again.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Generic, TypeVar

import structlog

from service.changes.detect import found_at_ms
from service.config import Settings
from service.errors import StaleLease, UpstreamError
from service.linked_account import LinkedAccount
from service.mass_drop import decide_left_out
from service.metrics import Metrics
from service.reading.plan import next_due
from service.store.feeds import FeedStore
from service.store.leases import Lease
from service.store.linked_accounts import LinkedAccountStore
from service.store.outcome import EndLease
from service.store.read_state import ReadState
from service.timefmt import from_epoch
from service.upstream.client import StackOneClient

log = structlog.get_logger("account_discovery")

# the answers of an LMS route that say the account is no LMS account (StackOne: an account
# of another category answers its LMS routes with an error)
NOT_LMS_STATUSES = frozenset({400, 404, 501})
NOT_LMS_RETRY_SECONDS = 24 * 3600.0
# accounts named one by one in a log line at most; more are counted
LOGGED_IDS = 20


@dataclass(slots=True)
class AccountListingResult:
    full: bool = True  # every listing is complete
    pages: int = 0
    changes: int = 0  # accounts found, changed or unlinked
    events: int = 0  # never any: accounts coming and going are not assignment events
    found: int = 0
    changed: int = 0
    unlinked: int = 0
    held: int = 0  # accounts a listing left out, kept until a second one agrees
    missing: int = 0  # accounts left out for the first time: not read, kept until then


@dataclass(slots=True)
class _Listed:
    accounts: dict[str, LinkedAccount]
    pages: int = 0
    skipped: int = 0
    served_at: datetime | None = None


class AccountListing:
    def __init__(
        self,
        store: LinkedAccountStore,
        client: StackOneClient,
        settings: Settings,
        metrics: Metrics,
        *,
        on_changed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.client = client
        self.settings = settings
        self.discovery = settings.account_discovery
        self.metrics = metrics
        self.on_changed = on_changed  # the accounts read changed: schedules follow
        self.clock = clock
        self.config_ids = {a.account_id for a in settings.accounts}

    async def poll(self, lease: Lease) -> AccountListingResult:
        """List the linked accounts once; raises UpstreamError (nothing changed)."""
        await self.forget_unlinked()  # a process that died forgetting left some
        started = self.clock()
        state = await self.store.listing_state()
        listed = await self._list()
        known = await self.store.all()
        found_ms = found_at_ms(listed.served_at, started)
        write = {
            account.id: account.encode()
            for account in (
                _as_known(a, known.get(a.id), found_ms) for a in listed.accounts.values()
            )
            if known.get(account.id) != account
        }
        # an account skipped (no id) may be one we know: such a listing cannot tell who left
        full = not listed.skipped
        gone = sorted(known.keys() - listed.accounts.keys()) if full else []
        now_ms = int(started * 1000)
        interval = self.discovery.interval
        decision = decide_left_out(
            gone,
            len(known),
            {account_id: known[account_id].missing_ms for account_id in gone},
            full=full,
            first_ms=state.mass_drop_ms,
            held=await self.store.held_drop() if full and state.mass_drop_ms else set(),
            now_ms=now_ms,
            agree_after_ms=int(interval * 1000),
        )
        if decision.hold_new:  # the accounts a second listing must agree on
            await self.store.hold_drop(decision.drop, interval * 10 + 60)
        drop = [] if decision.held else decision.drop
        for account_id in decision.missing:  # not read, kept until a second listing agrees
            write[account_id] = replace(known[account_id], missing_ms=now_ms).encode()
        done = replace(
            ReadState.after_read(None, now_ms, full=full), mass_drop_ms=decision.mass_drop_ms
        )
        due = next_due(lease.due_at, lease.claimed_at, interval, self.clock())
        async with lease.lock:
            committed = await self.store.commit(
                token=lease.token,
                outcome=EndLease(due),
                state=done,
                write=write,
                drop={account_id: account_id not in self.config_ids for account_id in drop},
            )
            if not committed:
                raise StaleLease("the linked accounts listing's lease was taken over")
            lease.ended = True
        result = AccountListingResult(pages=listed.pages, unlinked=len(drop))
        result.missing = len(decision.missing)
        result.found = sum(1 for a in write if a not in known)
        result.changed = len(write) - result.found - result.missing
        result.changes = len(write) + len(drop)
        if decision.held:
            result.held = len(decision.drop)
        self._report(result, write, known, drop, decision.missing)
        if result.changes and self.on_changed is not None:
            self.on_changed()
        await self.forget_unlinked()
        return result

    async def _list(self) -> _Listed:
        """Every linked account the listing names that the config wants (providers, owners),
        whatever the upstream's filters did."""
        discovery = self.discovery
        listed = _Listed({})
        owners: list[str | None] = [*(discovery.origin_owner_ids or [])] or [None]
        for owner in owners:
            async for page in self.client.linked_account_pages(discovery.providers, owner):
                listed.served_at = listed.served_at or page.served_at
                listed.pages += 1
                listed.skipped += page.skipped
                for account in page.accounts:
                    if self._wanted(account):
                        listed.accounts[account.id] = account
        if listed.skipped:
            self.metrics.records_skipped.labels("account_without_id").inc(listed.skipped)
            log.warning("linked_accounts_skipped", count=listed.skipped, reason="no usable id")
        return listed

    def _wanted(self, account: LinkedAccount) -> bool:
        providers, owners = self.discovery.providers, self.discovery.origin_owner_ids
        if providers is not None and account.provider not in providers:
            return False
        return owners is None or account.origin_owner_id in owners

    def _report(
        self,
        result: AccountListingResult,
        write: dict[str, str],
        known: dict[str, LinkedAccount],
        drop: list[str],
        missing_ids: list[str],
    ) -> None:
        if result.held:
            log.warning(
                "linked_accounts_drop_held",
                known=len(known),
                missing=result.held,
                until="a second complete listing agrees",
            )
        if not result.changes:
            return
        missing = set(missing_ids)
        log.info(
            "linked_accounts_listed",
            found=result.found,
            changed=result.changed,
            missing=result.missing,
            unlinked=result.unlinked,
            found_ids=[a for a in sorted(write) if a not in known][:LOGGED_IDS],
            changed_ids=[a for a in sorted(write) if a in known and a not in missing][:LOGGED_IDS],
            missing_ids=sorted(missing)[:LOGGED_IDS],
            unlinked_ids=sorted(drop)[:LOGGED_IDS],
        )

    async def forget_unlinked(self) -> None:
        """Forget the state of the accounts listings found unlinked (none, mostly)."""
        for account_id in await self.store.to_forget():
            users = await self.store.forget(account_id)
            log.info("linked_account_forgotten", account_id=account_id, users=users)


def _as_known(account: LinkedAccount, before: LinkedAccount | None, found_ms: int) -> LinkedAccount:
    """The account listed, with when it was found active: now when it is active and was not
    (new, or back from a spell inactive), else as it was."""
    if account.active and (before is None or not before.active):
        return replace(account, found_ms=found_ms)
    return replace(account, found_ms=before.found_ms if before is not None else 0)


T = TypeVar("T")


class NotLmsCheck(Generic[T]):
    """A reader of accounts (a user listing, a feed) whose discovered accounts' first read
    may say they are no LMS account: 400, 404 or 501 before any read of the account
    succeeded. Such an account is not read for a day (every process: the directory leaves
    it out), then tried again. The config's accounts are left alone (`strategy: auto`
    falls back to per-user polling on its own)."""

    def __init__(
        self,
        poll: Callable[[Lease], Awaitable[T]],
        store: LinkedAccountStore,
        feeds: FeedStore,
        settings: Settings,
        *,
        on_changed: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._poll = poll
        self.store = store
        self.feeds = feeds
        self.config_ids = {a.account_id for a in settings.accounts}
        self.on_changed = on_changed
        self.clock = clock

    async def poll(self, lease: Lease) -> T:
        try:
            return await self._poll(lease)
        except UpstreamError as e:
            if e.status in NOT_LMS_STATUSES and await self._first_read(lease.account_id):
                await self._skip(lease.account_id, e)
            raise

    async def _first_read(self, account_id: str) -> bool:
        if account_id in self.config_ids:
            return False
        listing = await self.feeds.listing_state(account_id)
        feed = await self.feeds.feed_state(account_id)
        return listing.last_poll_ms is None and feed.last_poll_ms is None

    async def _skip(self, account_id: str, error: UpstreamError) -> None:
        retry_at = self.clock() + NOT_LMS_RETRY_SECONDS
        if await self.store.mark_not_lms(account_id, int(retry_at * 1000)):
            log.warning(
                "account_not_lms",
                account_id=account_id,
                status=error.status,
                retry_at=from_epoch(retry_at).isoformat(),
            )
        if self.on_changed is not None:
            self.on_changed()
