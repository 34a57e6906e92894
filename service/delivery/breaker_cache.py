"""One endpoint's breaker state as this process knows it: read from Redis now and then,
changed at once by this process's own settles."""

from __future__ import annotations

import uuid

from service.delivery.breaker import Circuit, circuit
from service.endpoint_health import EndpointHealth, EndpointState
from service.store.claims import ClaimedEvent
from service.store.endpoints import EndpointStore

# How old the cached state may be while the circuit is closed: another process's pause is
# seen this late, and a busy worker does not read it before every claim.
REFRESH_SECONDS = 0.25


class BreakerCache:
    def __init__(self, endpoint_id: str, store: EndpointStore) -> None:
        self.endpoint_id = endpoint_id
        self.store = store
        self.health = EndpointHealth()
        self.probe_event_id: str | None = None  # the one event this process may probe with
        self.probe_holder = uuid.uuid4().hex  # this worker's value in the shared probe lock
        self._read_at = float("-inf")
        self._changes = 0  # bumped by every local change

    async def refresh(self, now: float) -> None:
        """Read the shared state when the cached one is stale, or whenever it is not
        plainly active (a pause or a disable may end in another process)."""
        if now - self._read_at < REFRESH_SECONDS and self.health.status is EndpointState.ACTIVE:
            return
        seen = self._changes
        health = await self.store.health(self.endpoint_id)
        if seen == self._changes:  # else a settle here knows better meanwhile
            self.health = health
        self._read_at = now

    def set(self, health: EndpointHealth) -> None:
        self.health = health
        self._changes += 1

    def circuit(self, now: float) -> tuple[Circuit, float]:
        return circuit(self.health, now)

    def healthy(self) -> bool:
        """Closed, and no failure since the last success."""
        return self.health.status is EndpointState.ACTIVE and not self.health.consecutive_failures

    def may_send(self, event: ClaimedEvent, now: float) -> bool:
        """Checked again just before sending: a claimed event waits in the hand-off for a
        moment, and the endpoint may have been paused meanwhile."""
        state, _ = self.circuit(now)
        return state is Circuit.CLOSED or (
            state is Circuit.HALF_OPEN and event.event_id == self.probe_event_id
        )
