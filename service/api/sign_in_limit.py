"""A limit on guessing the admin token: failed sign-ins (the console's form, a wrong
`Authorization: Bearer` on the admin API) per client and in total, in fixed windows.

Pure: every call takes `now`. Per process: each replica counts its own clients, so N
replicas allow N times the attempts; sharing the counts through Redis would cost a round
trip on every refusal for a factor that stays small. Memory is bounded: at most
`max_clients` clients are tracked; when more come, those whose window is over are
forgotten (the overall cap lets fewer clients than that fail within one window).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

FAILURES_PER_CLIENT = 10
FAILURES_OVERALL = 100
WINDOW_SECONDS = 60.0
MAX_CLIENTS = 10_000
CLIENTS_NAMED = 5  # in a summary: the clients that failed most


@dataclass(frozen=True, slots=True)
class FailureSummary:
    """One window's failed sign-ins, for one log line instead of one per attempt."""

    failures: int
    refused: int  # attempts answered 429 unchecked
    clients: int
    top_clients: list[tuple[str, int]]
    since: float  # the window's start


@dataclass(slots=True)
class _Window:
    start: float
    failures: int = 0


@dataclass(slots=True)
class _Tally:
    """What the summary of the current window will say."""

    start: float
    failures: Counter[str] = field(default_factory=Counter)
    refused: int = 0


class SignInLimiter:
    def __init__(
        self,
        per_client: int = FAILURES_PER_CLIENT,
        overall: int = FAILURES_OVERALL,
        window: float = WINDOW_SECONDS,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.per_client, self.overall, self.window = per_client, overall, window
        self.max_clients = max_clients
        self._clients: dict[str, _Window] = {}
        self._all: _Window | None = None
        self._tally: _Tally | None = None

    def retry_after(self, client: str, now: float) -> int | None:
        """Whole seconds until the client may try again, or None: it may try now. A refused
        attempt is counted for the summary; its token is never compared."""
        waits = [
            w.start + self.window - now
            for w, limit in (
                (self._clients.get(client), self.per_client),
                (self._all, self.overall),
            )
            if w is not None and w.start + self.window > now and w.failures >= limit
        ]
        if not waits:
            return None
        self._tally_for(now).refused += 1
        return max(1, math.ceil(max(waits)))

    def failed(self, client: str, now: float) -> None:
        self._all = self._count(self._all, now)
        if client not in self._clients and len(self._clients) >= self.max_clients:
            self._forget_some(now)
        self._clients[client] = self._count(self._clients.get(client), now)
        self._tally_for(now).failures[client] += 1

    def succeeded(self, client: str) -> None:
        """The right token: the client's failures before it no longer hold it back."""
        self._clients.pop(client, None)

    def take_summary(self, now: float) -> FailureSummary | None:
        """The last window's failures once it is over (then forgotten), or None: none, or
        the window is still open."""
        tally = self._tally
        if tally is None or now < tally.start + self.window:
            return None
        self._tally = None
        return FailureSummary(
            failures=sum(tally.failures.values()),
            refused=tally.refused,
            clients=len(tally.failures),
            top_clients=tally.failures.most_common(CLIENTS_NAMED),
            since=tally.start,
        )

    def tracked(self) -> int:
        return len(self._clients)

    def _count(self, window: _Window | None, now: float) -> _Window:
        if window is None or window.start + self.window <= now:
            window = _Window(now)
        window.failures += 1
        return window

    def _tally_for(self, now: float) -> _Tally:
        if self._tally is None:
            self._tally = _Tally(now)
        return self._tally

    def _forget_some(self, now: float) -> None:
        """Room for one more client: the windows over, else the oldest. (With the overall
        cap below `max_clients`, open windows never fill the table.)"""
        over = [c for c, w in self._clients.items() if w.start + self.window <= now]
        for client in over or list(self._clients)[:1]:
            del self._clients[client]
