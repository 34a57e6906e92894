"""Every account a key reaches, as an operator sees it (`GET /admin/accounts`, the console's
accounts page, the `lms_webhooks_accounts` gauge): the accounts read (the config's and the
discovered ones) and the linked accounts discovery knows but does not read (not active, or
no LMS account), each in one state.

States, the first that holds:
- `not_lms`: not read, its LMS routes answered that it is no LMS account (tried again daily);
- `inactive`: not read, its linked account's status is not `active`, or the last complete
  listing left it out (`status_reasons` say why);
- `backed_off`: read, but its key or integration was refused (401/403/412): it waits;
- `paused`: read, but its provider asked it to wait (a 429 with `provider_errors`);
- `active`: read as planned.

The states come from a few whole-set reads (no read per account), so a filtered page and the
gauge cost the same for ten accounts or a thousand; a page's details are one pipeline
(store/account_reads.py). The item's shape is built here only.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast, get_args

from service.config import AccountSettings, Settings, TrackedName
from service.contract import admin as m
from service.cursor import decode_cursor, encode_cursor
from service.errors import InvalidInput
from service.store import keys
from service.store.account_reads import AccountAsk, AccountReads, read_accounts
from service.store.directory import TrackedAccounts
from service.store.feeds import FeedFallback
from service.store.linked_accounts import LinkedAccount
from service.store.polls import AccountBackoff
from service.store.read_state import ReadState
from service.store.stores import Stores

STATES: tuple[str, ...] = get_args(m.AccountState)
SOURCES: tuple[str, ...] = get_args(m.AccountSource)
MISSING = "missing from the last listing"


@dataclass(frozen=True, slots=True)
class AccountRow:
    """One account and its state; `settings` None: not read."""

    account_id: str
    source: m.AccountSource
    state: m.AccountState
    settings: AccountSettings | None
    linked: LinkedAccount | None


def account_rows(
    settings: Settings,
    tracked: TrackedAccounts,
    backed_off: set[str],
    paused: set[str],
    now_ms: int,
) -> list[AccountRow]:
    """Pure: every account read and every linked account discovery knows, by id."""
    config = {a.account_id for a in settings.accounts}
    linked = tracked.linked if settings.account_discovery.enabled else {}
    rows = []
    for account_id in sorted(tracked.settings.keys() | linked.keys()):
        read = tracked.settings.get(account_id)
        state: m.AccountState
        if read is None:
            retry_ms = tracked.not_lms.get(account_id, 0)
            state = "not_lms" if retry_ms > now_ms else "inactive"
        elif account_id in backed_off:
            state = "backed_off"
        elif account_id in paused:
            state = "paused"
        else:
            state = "active"
        source: m.AccountSource = "config" if account_id in config else "discovery"
        rows.append(AccountRow(account_id, source, state, read, linked.get(account_id)))
    return rows


def count_by_state(rows: list[AccountRow]) -> Counter[tuple[str, str]]:
    """(state, source) → how many accounts: the gauge's series, a fixed ten."""
    return Counter((row.state, row.source) for row in rows)


def read_state(state: ReadState, due_ms: int | None) -> m.ReadState:
    """A feed's or listing's state as the admin API shows it."""
    return m.ReadState(
        watermark_ms=state.watermark_ms,
        last_read_ms=state.last_poll_ms,
        last_full_read_ms=state.last_full_sync_ms,
        next_read_at_ms=due_ms,
        failures=state.failures or 0,
        last_error=state.last_error,
    )


@dataclass(frozen=True, slots=True)
class Known:
    """What the whole-set reads said of every account."""

    fallbacks: dict[str, FeedFallback]
    backoffs: dict[str, AccountBackoff]
    paused: dict[str, float]  # account id → until when (epoch s)


def _ask(row: AccountRow, named: dict[str, list[str]], fallbacks: dict[str, Any]) -> AccountAsk:
    account = row.settings
    if account is None:
        return AccountAsk(row.account_id, feed=False, listing=False)
    users = tuple(sorted(named.get(row.account_id, ())))
    per_user = not account.uses_feed or row.account_id in fallbacks
    return AccountAsk(
        row.account_id,
        feed=account.uses_feed,
        listing=account.all_users,
        named_users=users,
        # an all-users account's listed users are many: its listing stands for them
        user_reads=per_user and not account.all_users,
        unservable=account.resources[1:],
    )


def account_item(
    row: AccountRow, reads: AccountReads, known: Known, defaults: AccountSettings, now_ms: int
) -> m.Account:
    """One account as the admin API and the console show it.

    `last_read_ms`: the last read that succeeded of its feed, its user listing or (polled
    per user) its named users. `lag_seconds`: how long the most overdue of those reads has
    been due (now − when it was due), 0 when none is overdue, null when it is not read."""
    account_id, account, linked = row.account_id, row.settings, row.linked
    fallback = known.fallbacks.get(account_id)
    backoff = known.backoffs.get(account_id)
    shown = account or defaults  # not read: as it would be read
    feed = listing = None
    states: list[tuple[ReadState, int | None]] = list(reads.users)
    if reads.feed is not None:
        feed = read_state(reads.feed, reads.feed_due_ms)
        if fallback is None:
            states.append((reads.feed, reads.feed_due_ms))
    if reads.listing is not None:
        listing = read_state(reads.listing, reads.listing_due_ms)
        states.append((reads.listing, reads.listing_due_ms))
    in_force: m.StrategyInForce | None = None
    if account is not None:
        in_force = "account" if account.uses_feed and fallback is None else "per_user"
    read_times = [s.last_poll_ms for s, _ in states if s.last_poll_ms is not None]
    due = [d for _, d in states if d is not None]
    errors = [s.last_error for s, _ in states if s.last_error]
    return m.Account(
        account_id=account_id,
        source=row.source,
        state=row.state,
        strategy=shown.strategy,
        strategy_in_force=in_force,
        fallback=None if fallback is None else m.FeedFallback(**asdict(fallback)),
        users="all" if shown.all_users else "listed",
        users_tracked=reads.users_tracked if account is not None else 0,
        feed=feed,
        listing=listing,
        backoff=None if backoff is None else m.AccountBackoff(**asdict(backoff)),
        paused_until=known.paused.get(account_id),
        unserved=[
            # a resource's name is one `track` names (the model checks it too)
            m.UnservedResource(resource=cast(TrackedName, name), until_ms=until_ms)
            for name, until_ms in reads.unserved
            if until_ms > now_ms  # a mark run out: asked for again at its next read
        ],
        provider=None if linked is None else linked.provider,
        provider_name=None if linked is None else linked.provider_name,
        label=None if linked is None else linked.label,
        owner=_owner(linked),
        status=None if linked is None else linked.status,
        status_reasons=_reasons(linked),
        last_read_ms=max(read_times, default=None),
        lag_seconds=(
            None if account is None else max(0.0, (now_ms - min(due, default=now_ms)) / 1000)
        ),
        last_error=backoff.error if backoff is not None else (errors[0] if errors else None),
    )


def _reasons(linked: LinkedAccount | None) -> list[str]:
    if linked is None:
        return []
    # not read until the next listing names it again, or a second one agrees it is gone
    missing = [MISSING] if linked.missing_ms else []
    return [*missing, *linked.status_reasons]


def _owner(linked: LinkedAccount | None) -> m.AccountOwner | None:
    if linked is None or (linked.origin_owner_id is None and linked.origin_owner_name is None):
        return None
    return m.AccountOwner(id=linked.origin_owner_id, name=linked.origin_owner_name)


class AccountsView:
    def __init__(self, settings: Settings, stores: Stores, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.stores = stores
        self.clock = clock
        self._defaults = AccountSettings.discovered("-", settings.account_discovery.defaults)

    async def _rows(self, now: float) -> tuple[list[AccountRow], Known]:
        stores = self.stores
        tracked = await stores.accounts.current()
        known = Known(
            await stores.users.fallbacks(),
            await stores.polls.backed_off_accounts(),
            await stores.polls.paused_accounts(now),
        )
        rows = account_rows(
            self.settings, tracked, set(known.backoffs), set(known.paused), int(now * 1000)
        )
        return rows, known

    async def counts(self) -> Counter[tuple[str, str]]:
        rows, _ = await self._rows(self.clock())
        return count_by_state(rows)

    async def page(
        self, state: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> tuple[list[m.Account], str | None]:
        """The accounts in `state` (None: all), by id, up to `limit` (None: all) after the
        cursor's; and the cursor of the next page (None: the end)."""
        if state is not None and state not in STATES:
            raise InvalidInput(f"`state` must be one of {', '.join(STATES)}")
        now = self.clock()
        rows, known = await self._rows(now)
        if state is not None:
            rows = [r for r in rows if r.state == state]
        if cursor is not None:
            after = decode_cursor(cursor, "accounts", (str,))[0]
            ids = [r.account_id for r in rows]
            rows = rows[bisect.bisect_right(ids, after) :]
        next_cursor = None
        if limit is not None and len(rows) > limit:
            rows = rows[:limit]
            next_cursor = encode_cursor("accounts", rows[-1].account_id)
        users = self.stores.users
        named: dict[str, list[str]] = {}  # the users the config or the admin API name
        for member in users.configured | await users.runtime():
            account_id, user_id = keys.parse_user_member(member)
            named.setdefault(account_id, []).append(user_id)
        asks = [_ask(row, named, known.fallbacks) for row in rows]
        reads = await read_accounts(self.stores.redis, asks)
        now_ms = int(now * 1000)
        items = [
            account_item(row, got, known, self._defaults, now_ms)
            for row, got in zip(rows, reads, strict=True)
        ]
        return items, next_cursor
