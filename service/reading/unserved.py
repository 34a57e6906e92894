"""A resource after an account's first that its provider does not serve (a provider without
completions answers 400/404/501 on /unified/lms/completions) must not hold the others back:
it is skipped for that account for a day (logged once, counted), and the read goes on for
the others. Any other failure of it fails the read as before (a 5xx is retried soon)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import structlog
from redis.asyncio import Redis

from service.errors import ResourceUnserved, UpstreamError
from service.metrics import Metrics
from service.resources import Resource
from service.store.leases import Lease
from service.store.unserved import UnservedResources
from service.timefmt import from_epoch

log = structlog.get_logger("schedule")

UNSERVED_STATUSES = frozenset({400, 404, 501})
UNSERVED_RETRY_SECONDS = 24 * 3600.0


class ServedResources:
    def __init__(
        self, redis: Redis, metrics: Metrics, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = UnservedResources(redis)
        self.metrics = metrics
        self.clock = clock

    async def of(self, account_id: str, resources: Sequence[Resource]) -> tuple[Resource, ...]:
        """The account's resources to read now."""
        return await self.store.served(account_id, resources, int(self.clock() * 1000))

    async def failed(
        self, lease: Lease, resources: Sequence[Resource], n: int, error: UpstreamError
    ) -> ResourceUnserved | None:
        """The read (of `lease`) of `resources[n]` failed: a ResourceUnserved to end the read
        with (the resources before it are committed; those after it are read next time) when
        it is one after the first that the provider does not serve, marked so while the
        lease holds (no mark of an account forgotten meanwhile); None: the failure
        stands."""
        resource, account_id = resources[n], lease.account_id
        if n == 0 or error.status not in UNSERVED_STATUSES:
            return None
        retry_at = self.clock() + UNSERVED_RETRY_SECONDS
        async with lease.lock:  # its token does not move meanwhile
            marked = await self.store.mark(account_id, resource, int(retry_at * 1000), lease.held)
        if marked:
            self.metrics.poll_failures.labels("resource_not_served").inc()
            log.warning(
                "resource_not_served",
                account_id=account_id,
                resource=resource.name,
                status=error.status,
                retry_at=from_epoch(retry_at).isoformat(),
            )
        return ResourceUnserved(account_id, resource.name)
