"""The StackOne client: one user's assignments, page by page, within the shared budget."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from urllib.parse import quote

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from service import __version__
from service.config import StackOneSettings
from service.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.metrics import Metrics
from service.store import keys
from service.store.limits import Budget, SharedLimiter
from service.timefmt import iso_ms
from service.upstream.model import Page, parse_page

log = structlog.get_logger("upstream")

BUDGET = "upstream"
# 401 key unusable, 403 account forbidden, 404 unknown user, 412 integration disabled
_REJECTED = frozenset({401, 403, 404, 412})
_RATE_LIMITED = frozenset({408, 429})
DEFAULT_RETRY_AFTER = 5.0
MAX_RETRY_AFTER = 600.0
MAX_PAGE_BYTES = 32 * 1024 * 1024  # 100 records are far below this; a runaway body is not


def retry_after_seconds(header: str | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    """Retry-After in seconds, clamped to [0, 10 min]; unreadable → `default`."""
    try:
        value = float(header) if header is not None else default
    except ValueError:
        value = default
    return min(max(value, 0.0), MAX_RETRY_AFTER)


def error_for_status(status: int, retry_after: str | None) -> UpstreamError | None:
    """Map a non-2xx upstream status to the error that says what to do about it."""
    if 200 <= status < 300:
        return None
    message = f"upstream answered {status}"
    if status in _RATE_LIMITED:
        return UpstreamRateLimited(
            message, status=status, retry_after=retry_after_seconds(retry_after)
        )
    if status in _REJECTED:
        return UpstreamRejected(message, status=status)
    if status >= 500:
        return UpstreamUnavailable(message, status=status)
    return UpstreamError(message, status=status)


_exponential = wait_random_exponential(multiplier=0.5, max=30)


def _backoff(state: RetryCallState) -> float:
    """No extra wait after a 429/408: the shared pause it set already holds every process."""
    error = state.outcome.exception() if state.outcome else None
    return 0.0 if isinstance(error, UpstreamRateLimited) else _exponential(state)


class StackOneClient:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: StackOneSettings,
        limiter: SharedLimiter,
        metrics: Metrics,
        *,
        attempts: int = 4,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.session = session
        self.settings = settings
        self.limiter = limiter
        self.metrics = metrics
        self.attempts = attempts
        self.sleep = sleep
        token = base64.b64encode(f"{settings.api_key.get_secret_value()}:".encode()).decode()
        self._auth = f"Basic {token}"
        per_minute = settings.max_requests_per_minute
        # Up to a second's worth may go back to back (smooth, never a minute's budget at
        # once); the steady rate leaves room for that burst, so no 60 s window exceeds budget.
        burst = max(1.0, min(per_minute / 60.0, per_minute * 0.05))
        self.budget = Budget(
            BUDGET, max(per_minute - burst, 1.0) / 60.0, burst, pause_key=keys.UPSTREAM_PAUSE
        )

    def __repr__(self) -> str:
        return f"StackOneClient(base_url={self.settings.base_url!r})"

    async def pages(
        self,
        account_id: str,
        user_id: str,
        updated_after: datetime | None,
        *,
        permitted: bool = False,
    ) -> AsyncIterator[Page]:
        """Every page of the user's assignments, following `next` until it is empty.

        `permitted`: the caller already holds the budget's permit for the first request (the
        poll took it together with the user's state, saving a Redis round trip).
        """
        url = f"{self.settings.base_url}/unified/lms/users/{quote(user_id, safe='')}/assignments"
        params: dict[str, str] = {"page_size": str(self.settings.page_size)}
        if updated_after is not None:
            name = (
                "filter[updated_after]"
                if self.settings.filter_style == "deep_object"
                else "updated_after"
            )
            params[name] = iso_ms(updated_after)
        headers = {
            "Authorization": self._auth,
            "x-account-id": quote(account_id, safe=""),
            "Accept": "application/json",
            "User-Agent": f"lms-webhooks/{__version__}",
        }
        seen_cursors: set[str] = set()
        for _ in range(self.settings.max_pages):
            page = await self._get_with_retries(url, params, headers, permitted)
            permitted = False
            yield page
            if not page.next:
                return
            if page.next in seen_cursors:
                raise UpstreamMalformed("the `next` cursor repeats itself")
            seen_cursors.add(page.next)
            params = {**params, "next": page.next}
        raise UpstreamMalformed(f"more than {self.settings.max_pages} pages: runaway `next` chain")

    async def _get_with_retries(
        self, url: str, params: dict[str, str], headers: dict[str, str], permitted: bool
    ) -> Page:
        # Rate-limit answers wait out the shared pause inside _acquire; 5xx and broken
        # connections back off exponentially with jitter. Both count as attempts.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((UpstreamUnavailable, UpstreamRateLimited)),
            wait=_backoff,
            stop=stop_after_attempt(self.attempts),
            sleep=self.sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                # a retry needs a permit of its own
                first = permitted and attempt.retry_state.attempt_number == 1
                return await self._get(url, params, headers, permitted=first)
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _acquire(self) -> None:
        while True:
            wait = await self.limiter.try_acquire(self.budget)
            if wait <= 0:
                return
            self.metrics.throttle_wait.labels("upstream").inc(wait)
            await self.sleep(wait)

    @staticmethod
    async def _body(response: aiohttp.ClientResponse) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > MAX_PAGE_BYTES:
                raise UpstreamMalformed(f"a page larger than {MAX_PAGE_BYTES} bytes")
        return bytes(body)

    async def _get(
        self, url: str, params: dict[str, str], headers: dict[str, str], *, permitted: bool
    ) -> Page:
        if not permitted:
            await self._acquire()
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        try:
            async with self.session.get(
                url, params=params, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                raw = await self._body(response)
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except TimeoutError as e:
            self.metrics.upstream_requests.labels("timeout").inc()
            raise UpstreamUnavailable("upstream request timed out") from e
        except aiohttp.ClientError as e:
            self.metrics.upstream_requests.labels("error").inc()
            raise UpstreamUnavailable(f"upstream connection failed: {type(e).__name__}") from e
        self.metrics.upstream_requests.labels(str(status)).inc()
        error = error_for_status(status, retry_after)
        if isinstance(error, UpstreamRateLimited):
            log.warning("upstream_rate_limited", status=status, retry_after=error.retry_after)
            await self.limiter.pause(keys.UPSTREAM_PAUSE, error.retry_after)
        if error is not None:
            raise error
        return parse_page(raw)
