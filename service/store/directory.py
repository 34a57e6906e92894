"""Which accounts are read, and how: the config's accounts (always, each with its own
settings) and, with `account_discovery` on, every active linked account discovery found,
read with `account_discovery.defaults`. Discovery keeps its findings in Redis
(store/linked_accounts.py), so every process reads the same accounts; each process caches
them and looks again at most once a SHARED_FOR (a counter says whether anything changed).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.config import AccountSettings, Settings
from service.resources import Resource, tracked
from service.store.linked_accounts import LinkedAccount, LinkedAccountStore

# A process sees a change of the discovered accounts within this long (one GET of the
# counter per SHARED_FOR at most, however many readers ask).
SHARED_FOR = 1.0


@dataclass(frozen=True, slots=True)
class TrackedAccounts:
    """The accounts read now, by id; and what discovery knows of each linked one."""

    settings: dict[str, AccountSettings]
    linked: dict[str, LinkedAccount]
    not_lms: dict[str, int]  # account id → when (ms) it is tried again

    @property
    def feed_accounts(self) -> set[str]:
        return {a for a, s in self.settings.items() if s.uses_feed}

    @property
    def listing_accounts(self) -> list[str]:
        return sorted(a for a, s in self.settings.items() if s.all_users)

    @property
    def auto_accounts(self) -> set[str]:
        return {a for a, s in self.settings.items() if s.strategy == "auto"}


def tracked_accounts(
    settings: Settings,
    linked: dict[str, LinkedAccount],
    not_lms: dict[str, int],
    now_ms: int,
) -> TrackedAccounts:
    """Pure: the config's accounts, then each active linked account that is not the config's
    (the config's settings win) and not waiting to be tried again as no LMS account."""
    tracked = {a.account_id: a for a in settings.accounts}
    discovery = settings.account_discovery
    if discovery.enabled:
        for account_id, account in sorted(linked.items()):
            if account_id in tracked or not account.active:
                continue
            if not_lms.get(account_id, 0) > now_ms:
                continue
            tracked[account_id] = AccountSettings.discovered(account_id, discovery.defaults)
    return TrackedAccounts(tracked, linked, not_lms)


class AccountDirectory:
    def __init__(
        self,
        store: LinkedAccountStore,
        settings: Settings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.clock = clock
        self._current = tracked_accounts(settings, {}, {}, 0)
        self._version: int | None = None
        self._checked = float("-inf")  # time.monotonic() of the last look at the counter
        self._retry_at = float("inf")  # the next not-LMS retry (ms): the set changes then
        # moves whenever the accounts read are worked out again: a schedule compares it with
        # the one it last synced at, to follow at its next tick
        self.generation = 0

    async def current(self) -> TrackedAccounts:
        """The accounts read now. Without discovery: the config's, without a Redis call."""
        if not self.settings.account_discovery.enabled:
            return self._current
        if time.monotonic() - self._checked < SHARED_FOR:
            return self._current
        now_ms = int(self.clock() * 1000)
        version = await self.store.version()
        self._checked = time.monotonic()
        if version != self._version or now_ms >= self._retry_at:
            linked, not_lms = await self.store.all(), await self.store.not_lms()
            self._current = tracked_accounts(self.settings, linked, not_lms, now_ms)
            self.generation += 1
            self._version = version
            self._retry_at = min((t for t in not_lms.values() if t > now_ms), default=float("inf"))
        return self._current

    @property
    def version(self) -> int | None:
        """The version of the discovered accounts `current` last gave (None: no discovery,
        the config's accounts never change), for writes that must not act on a stale view."""
        return self._version if self.settings.account_discovery.enabled else None

    def forget_cache(self) -> None:
        """This process changed the discovered accounts: the next `current` reads them."""
        self._checked = float("-inf")

    async def account(self, account_id: str) -> AccountSettings | None:
        return (await self.current()).settings.get(account_id)

    async def resources(self, account_id: str) -> tuple[Resource, ...]:
        """What is tracked of the account's users (the default for an account not read)."""
        account = await self.account(account_id)
        return account.resources if account is not None else tracked(None)

    async def found_ms(self, account_id: str) -> int | None:
        """When discovery found a discovered account active (ms, the upstream's clock);
        None for a config account (its own settings, found when the config named it)."""
        if self.settings.account(account_id) is not None:
            return None
        linked = (await self.current()).linked.get(account_id)
        return linked.found_ms if linked is not None and linked.found_ms else None
