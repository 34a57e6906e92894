"""What one account may take of a process's upstream requests: at most ACCOUNT_IN_FLIGHT at a
time, and none while its provider has asked it to wait (a 429 with `provider_errors`).

Both are per process and hold only the accounts that need it now (requests in flight or
waiting, pauses not yet over): hundreds of accounts seen once cost nothing afterwards. Every
process learns of a pause through Redis as well (the scheduler defers the account's reads);
this copy stops the reads already under way here from asking again meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

# CONTRACT §8: a provider that answers slowly cannot take the process's concurrency
ACCOUNT_IN_FLIGHT = 2


class _Slot:
    __slots__ = ("semaphore", "users")

    def __init__(self) -> None:
        self.semaphore = asyncio.Semaphore(ACCOUNT_IN_FLIGHT)
        self.users = 0  # requests holding or waiting for the semaphore


class AccountSlots:
    """A semaphore per account with requests in flight or waiting, dropped when none is."""

    def __init__(self) -> None:
        self._slots: dict[str, _Slot] = {}

    def __len__(self) -> int:
        return len(self._slots)

    @asynccontextmanager
    async def slot(self, account_id: str) -> AsyncIterator[None]:
        slot = self._slots.get(account_id)
        if slot is None:
            slot = self._slots[account_id] = _Slot()
        slot.users += 1
        try:
            async with slot.semaphore:
                yield
        finally:
            slot.users -= 1
            if slot.users == 0:
                del self._slots[account_id]


class AccountPauses:
    """Until when (the client's clock) each account's provider has asked it to wait."""

    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self._until)

    def pause(self, account_id: str, until: float, now: float) -> None:
        """Never shortens a pause; forgets the pauses that are over."""
        self._until = {a: u for a, u in self._until.items() if u > now}
        self._until[account_id] = max(until, self._until.get(account_id, until))

    def left(self, account_id: str, now: float) -> float:
        """Seconds the account has still to wait; 0 when it may go."""
        until = self._until.get(account_id)
        if until is None:
            return 0.0
        if until <= now:
            del self._until[account_id]
            return 0.0
        return until - now
