"""One claimed read, start to end (a user's poll, an account's feed or user listing): run
it, then end its lease by its outcome.

A success ends with the poll's own commit, which moves the user on to its next due time and
ends its account's run of failing reads and its back-off, whichever process wrote them. A
failure releases the lease with the failure counted: due again soon for passing trouble,
slowly for an unusable key, account or user, whose whole account is then backed off, not
hammered; after its Retry-After when the account's provider limited it, and the whole
account is paused as long. A read cut off by a Redis outage releases its lease once Redis
answers again, so its next read is not a lease late.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

import structlog
from opentelemetry.trace import Span
from redis.exceptions import RedisError

from service import tracing
from service.errors import (
    ResourceUnserved,
    StaleLease,
    UpstreamError,
    UpstreamMalformed,
    UpstreamProviderLimited,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.httpspec import StatusClass, status_class
from service.metrics import Metrics
from service.reading.plan import next_due
from service.reading.read_result import ReadResult
from service.store.leases import Lease, Leases
from service.store.outcome import EndLease
from service.store.polls import AccountBackoff, PollStore
from service.store.read_state import ReadState
from service.store.redis_health import log_redis_error, out_of_memory

log = structlog.get_logger("schedule")

# how often a failed read's release is tried again while Redis does not answer
RELEASE_RETRY_SECONDS = 0.5
# and for how long, at most: a read that runs out of it is polled again a lease later
RELEASE_GIVE_UP_SECONDS = 15.0
# Reads of one account failing in a row (5xx, timeouts: each after the client's own retries)
# before the account is backed off, and the longest it then waits between probes.
ACCOUNT_FAILURES = 5
FAILING_ACCOUNT_MAX_DELAY = 120.0


def account_rejected(error: Exception) -> bool:
    """The key or the whole account is unusable (not just one user)."""
    return (
        isinstance(error, UpstreamRejected)
        and error.status is not None
        and status_class(error.status) is StatusClass.ACCOUNT_REJECTED
    )


def retry_delay(error: Exception, failures: int, interval: float) -> float:
    """When a failed poll is tried again: soon for passing trouble, slowly for rejections,
    after its Retry-After when the account's provider asked it to wait."""
    if isinstance(error, UpstreamProviderLimited):
        return error.retry_after
    if isinstance(error, UpstreamRejected):  # key, account or user unusable: do not hammer
        return max(interval, min(300.0 * 2.0 ** min(failures, 4), 6 * 3600.0))
    return min(interval, 5.0 * 2.0 ** min(failures, 10))


def failing_account_delay(probes_failed: int) -> float:
    """How long an account whose reads keep failing waits: 30 s after ACCOUNT_FAILURES in a
    row, doubling with each failed probe, at most FAILING_ACCOUNT_MAX_DELAY (an outage of
    StackOne itself fails every account: they are all back within that of its end)."""
    return min(30.0 * 2.0 ** min(probes_failed, 10), FAILING_ACCOUNT_MAX_DELAY)


def failure_reason(error: Exception) -> str:
    """A bounded label for the poll failures metric."""
    if isinstance(error, UpstreamRejected):
        return "account_rejected" if account_rejected(error) else "user_not_found"
    if isinstance(error, UpstreamRateLimited):
        return "rate_limited"
    if isinstance(error, UpstreamProviderLimited):
        return "provider_rate_limited"
    if isinstance(error, UpstreamMalformed):
        return "malformed"
    if isinstance(error, UpstreamUnavailable):
        return "unavailable"
    return "error"


async def quietly(moving: Awaitable[bool]) -> None:
    """Move a lease (release, hand back); while Redis is away it runs out by itself and
    another poll follows."""
    try:
        await moving
    except RedisError as e:
        log_redis_error(log, "lease_release_failed", e)


class Reader(Protocol):
    """What the runner runs: Poller (a user), FeedReader (an account's feed), UserListing."""

    async def poll(self, lease: Lease) -> ReadResult: ...


class PollRunner:
    def __init__(
        self,
        poller: Reader,
        leases: Leases,
        store: PollStore,
        metrics: Metrics,
        *,
        interval: float,
        on_read: Callable[[Lease, ReadResult], None] | None = None,
        span_name: str = "poll",
        per_account: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.poller = poller
        # its members are accounts' (users, feeds, listings): their failures back the
        # account off or pause it; False for the key's linked-account listing, whose member
        # (keys.ACCOUNT_LISTING) is no account
        self.per_account = per_account
        self.span_name = span_name  # each read's span: poll, feed read, listing read
        self.on_read = on_read  # what each read cost, for the budget plan
        self.leases = leases
        self.store = store
        self.metrics = metrics
        self.interval = interval  # the reader's cadence: failures retry within it
        self.clock = clock

    async def run(self, lease: Lease) -> None:
        """Poll, and end the lease; only a cancellation leaves it held. Traced as one span
        (`span_name`), the parent of its upstream requests' and its commits' spans."""
        attributes = {"lms_webhooks.account_id": lease.account_id}
        if lease.user_id:
            attributes["lms_webhooks.user_id"] = lease.user_id
        with tracing.span(self.span_name, attributes) as current:
            outcome = await self._run(lease, current)
            current.set_attribute("lms_webhooks.outcome", outcome)

    async def _run(self, lease: Lease, current: Span) -> str:
        started = time.perf_counter()
        outcome = "ok"
        try:
            result = await self.poller.poll(lease)
            current.set_attributes(
                {
                    "lms_webhooks.pages": result.pages,
                    "lms_webhooks.changes": result.changes,
                    "lms_webhooks.events": result.events,
                }
            )
            if self.on_read is not None:
                self.on_read(lease, result)
            log.debug(
                "poll_done",
                account_id=lease.account_id,
                user_id=lease.user_id,
                full=result.full,
                pages=result.pages,
                changes=result.changes,
                events=result.events,
            )
        except ResourceUnserved:
            await self._ended_early(lease)
        except StaleLease:
            outcome = "stale"
            log.warning("poll_lease_lost", account_id=lease.account_id, user_id=lease.user_id)
        except (UpstreamError, RedisError) as e:
            outcome = "error"
            tracing.failed(current, type(e).__name__)
            await self._failed(lease, e)
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except Exception as e:  # a bug must not kill the scheduler: log it, retry the user later
            outcome = "error"
            tracing.failed(current, type(e).__name__)
            log.exception("poll_crashed", account_id=lease.account_id, user_id=lease.user_id)
            await self._failed(lease, e)
        finally:
            self.metrics.poll_duration.labels(outcome).observe(time.perf_counter() - started)
        return outcome

    async def _ended_early(self, lease: Lease) -> None:
        """The read stopped at a resource its provider does not serve (skipped from now on):
        what it read before is committed, and it ends as a success, due an interval on."""
        now = self.clock()
        due = next_due(lease.due_at, lease.claimed_at, self.interval, now)
        done = ReadState(last_poll_ms=int(now * 1000), failures=0, last_error="")
        await self._release(lease, EndLease(due), done)
        # no commit ended it (what it read before was flushed): its run of failures and its
        # back-off end here, as a commit would end them (rare: once a day per account and
        # resource)
        await self.store.end_troubles(lease.account_id)

    async def _failed(self, lease: Lease, error: Exception) -> None:
        self.metrics.poll_failures.labels(failure_reason(error)).inc()
        try:
            failures = (await self.leases.state(lease.member)).failures
        except RedisError:
            failures = None
        failures = (failures or 0) + 1
        delay = retry_delay(error, failures - 1, self.interval)
        if self.per_account:  # the key's own listing: its failures space its reads out
            await self._account_failed(lease, error, delay)
        # Redis out of memory fails every poll alike: readiness reports that episode once
        emit = log.debug if out_of_memory(error) else log.warning
        emit(
            "poll_failed",
            account_id=lease.account_id,
            user_id=lease.user_id,
            error=str(error),
            error_type=type(error).__name__,
            status=getattr(error, "status", None),
            failures=failures,
            retry_in=round(delay, 3),
        )
        failed = ReadState(failures=failures, last_error=str(error))
        await self._release(lease, EndLease(self.clock() + delay), failed)

    async def _account_failed(self, lease: Lease, error: Exception, delay: float) -> None:
        """What a failed read means for its whole account."""
        if account_rejected(error):
            assert isinstance(error, UpstreamRejected)
            await self._back_off_account(lease, error)
        elif isinstance(error, UpstreamUnavailable):
            await self._count_account_failure(lease, error)
        elif isinstance(error, UpstreamProviderLimited):
            await self._pause_account(lease, delay)

    async def _release(self, lease: Lease, outcome: EndLease, failed: ReadState) -> None:
        """Release a failed read's lease. While Redis is away (the likely reason the read
        failed), try again until it answers, so the failure is counted and the next read is
        due on the failure schedule. The heartbeat keeps the lease meanwhile (this read
        still counts as running), and the release is fenced, so a late one changes nothing
        once another process has taken the member over. Given up after
        RELEASE_GIVE_UP_SECONDS: the lease runs out and another read follows."""
        deadline = time.monotonic() + RELEASE_GIVE_UP_SECONDS
        while True:
            try:
                await self.leases.release(lease, outcome, failed)
                return
            except RedisError as e:
                if time.monotonic() + RELEASE_RETRY_SECONDS > deadline:
                    log.warning("lease_release_failed", member=lease.member, error=str(e))
                    return
            await asyncio.sleep(RELEASE_RETRY_SECONDS)

    async def _pause_account(self, lease: Lease, seconds: float) -> None:
        """Its provider asked the account to wait: every process defers its reads (users,
        feed, listing) until then; the key and the other accounts go on. Fenced by the
        read's lease, as a back-off is."""
        account_id, now = lease.account_id, self.clock()
        try:
            async with lease.lock:  # its token does not move meanwhile
                await self.store.pause_account(account_id, now + seconds, now, lease.held)
        except RedisError as e:  # this read still comes back after the pause, by its lease
            log_redis_error(log, "account_pause_failed", e, account_id=account_id)

    async def _count_account_failure(self, lease: Lease, error: UpstreamError) -> None:
        """ACCOUNT_FAILURES reads of one account failing in a row (its provider down, or
        answering too slowly) back the account off: every member would fail alike, each
        after the client's retries, spending the key the other accounts share. Counted
        only while the read's lease holds, as a back-off is written (a count of an account
        forgotten meanwhile would wait an hour for a re-linked account, part-way into a
        run)."""
        account_id = lease.account_id
        try:
            async with lease.lock:  # its token does not move meanwhile
                failures = await self.store.count_failure(account_id, lease.held)
        except RedisError as e:
            log_redis_error(log, "account_failure_count_failed", e, account_id=account_id)
            return
        if failures < ACCOUNT_FAILURES:  # 0: the lease was lost, nothing counted
            return
        try:
            previous = await self.store.account_backoff(account_id)
        except RedisError as e:
            log_redis_error(log, "account_backoff_failed", e, account_id=account_id)
            return
        if previous is not None and previous.until > self.clock():
            return  # in force: these are reads that were under way when it began
        backoffs = (previous.failures if previous else 0) + 1  # its probes failed since
        delay = failing_account_delay(backoffs - 1)
        await self._back_off_account(lease, error, delay, backoffs)

    async def _back_off_account(
        self,
        lease: Lease,
        error: UpstreamError,
        delay: float | None = None,
        failures: int | None = None,
    ) -> None:
        """Back the whole account off: its other users are not polled until then either.
        `delay` and `failures` default to a refusal's (401/403/412) back-off schedule.
        Fenced by the read's lease: a read whose account was forgotten meanwhile (its
        leases go first) leaves no back-off behind, which nothing would ever clear."""
        account_id = lease.account_id
        try:
            if failures is None:
                previous = await self.store.account_backoff(account_id)
                failures = (previous.failures if previous else 0) + 1
            if delay is None:
                delay = retry_delay(error, failures - 1, self.interval)
            backoff = AccountBackoff(self.clock() + delay, failures, str(error))
            async with lease.lock:  # its token does not move meanwhile
                written = await self.store.back_off_account(account_id, backoff, lease.held)
        except RedisError as e:
            log_redis_error(log, "account_backoff_failed", e, account_id=account_id)
            return
        if not written:  # taken over (that read backs it off), or forgotten
            log.debug("account_backoff_lease_lost", account_id=account_id, member=lease.member)
            return
        log.warning(
            "account_backed_off",
            account_id=account_id,
            status=error.status,
            failures=failures,
            retry_in=round(delay, 1),
        )
