"""The StackOne client: a user's or an account's assignments and an account's users, page
by page, within the shared budget."""

from __future__ import annotations

import asyncio
import base64
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Protocol, TypeVar
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

from service.config import StackOneSettings
from service.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.httpspec import USER_AGENT, StatusClass, retry_after_seconds, status_class
from service.metrics import Metrics
from service.timefmt import iso_ms
from service.upstream.model import Page, UserPage, parse_page, parse_user_page
from service.user_ids import DOT_SEGMENTS

log = structlog.get_logger("upstream")

DEFAULT_RETRY_AFTER = 5.0  # a 429/408 without a readable Retry-After pauses this long
# A permit handed in with other work (`keep_permit`) is good for this long: one that stayed
# unused (its poll failed before its first request) must not add to a later burst.
KEPT_PERMIT_SECONDS = 1.0
MAX_RETRY_AFTER = 600.0
MAX_PAGE_BYTES = 32 * 1024 * 1024  # 100 records are far below this; a runaway body is not
NOT_IMPLEMENTED = 501
ACCOUNT_ASSIGNMENTS = "/unified/lms/assignments"
ACCOUNT_USERS = "/unified/lms/users"


class _Paged(Protocol):
    @property
    def next(self) -> str | None: ...


_PageT = TypeVar("_PageT", bound=_Paged)


class RequestRate(Protocol):
    """The API key's budget, shared by every process (store.limits.SharedRate)."""

    async def try_acquire(self) -> float:
        """0 when a request may go now, else seconds to wait before asking again."""

    async def pause(self, seconds: float) -> None:
        """Every process holds its requests for `seconds` (a 429's Retry-After)."""


def error_for_status(status: int, retry_after: str | None, now: float) -> UpstreamError | None:
    """Map a non-2xx upstream status to the error that says what to do about it."""
    kind = status_class(status)
    if kind is StatusClass.SUCCESS:
        return None
    message = f"upstream answered {status}"
    if kind is StatusClass.RATE_LIMITED:
        pause = retry_after_seconds(retry_after, now=now, cap=MAX_RETRY_AFTER)
        return UpstreamRateLimited(
            message, status=status, retry_after=DEFAULT_RETRY_AFTER if pause is None else pause
        )
    if kind in (StatusClass.ACCOUNT_REJECTED, StatusClass.NOT_FOUND):
        return UpstreamRejected(message, status=status)
    if status == NOT_IMPLEMENTED:  # an endpoint the provider lacks: retrying cannot help
        return UpstreamError(message, status=status)
    if kind is StatusClass.SERVER_ERROR:
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
        rate: RequestRate,
        metrics: Metrics,
        *,
        attempts: int = 4,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.session = session
        self.settings = settings
        self.rate = rate
        self.metrics = metrics
        self.attempts = attempts
        self.sleep = sleep
        self.clock = clock
        token = base64.b64encode(f"{settings.api_key.get_secret_value()}:".encode()).decode()
        self._auth = f"Basic {token}"
        self._kept: deque[float] = deque()  # when each permit handed in was granted

    def keep_permit(self) -> None:
        """A permit of the budget was granted along with other work (a poll gets the first
        request's with the user's state, in the same Redis round trip): the next request
        takes it instead of asking for one. Permits are interchangeable, so whichever request
        takes it, the budget holds."""
        self._kept.append(time.monotonic())

    def __repr__(self) -> str:
        return f"StackOneClient(base_url={self.settings.base_url!r})"

    async def pages(
        self, account_id: str, user_id: str, updated_after: datetime | None
    ) -> AsyncIterator[Page]:
        """Every page of one user's assignments, following `next` until it is empty.

        A user id `.` or `..` is never requested: the HTTP client resolves it as a dot
        segment (even percent-encoded), and `..` asked for the whole account's assignments
        as that user's. Ids are refused where they enter (service/user_ids.py); one
        tracked before that rule fails its poll here, as an unknown user does."""
        if user_id in DOT_SEGMENTS:
            raise UpstreamRejected(f"user id {user_id!r} cannot be a URL path segment")
        path = f"/unified/lms/users/{quote(user_id, safe='')}/assignments"
        async for page in self._walk(path, account_id, updated_after, parse_page, per_user=True):
            yield page

    async def account_pages(
        self, account_id: str, updated_after: datetime | None
    ) -> AsyncIterator[Page]:
        """Every page of the account's assignments, of all its users (the change feed)."""
        walk = self._walk(
            ACCOUNT_ASSIGNMENTS, account_id, updated_after, parse_page, per_user=False
        )
        async for page in walk:
            yield page

    async def user_pages(
        self, account_id: str, updated_after: datetime | None
    ) -> AsyncIterator[UserPage]:
        """Every page of the account's user listing."""
        walk = self._walk(ACCOUNT_USERS, account_id, updated_after, parse_user_page, per_user=False)
        async for page in walk:
            yield page

    async def _walk(
        self,
        path: str,
        account_id: str,
        updated_after: datetime | None,
        parse: Callable[[bytes], _PageT],
        *,
        per_user: bool,
    ) -> AsyncIterator[_PageT]:
        """Every page of one listing, following `next` until it is empty; a chain longer
        than a user's (or an account's) `max_pages` is a runaway cursor."""
        limit = self.settings.max_pages if per_user else self.settings.max_account_pages
        url = f"{self.settings.base_url}{path}"
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
            "User-Agent": USER_AGENT,
        }
        seen_cursors: set[str] = set()
        for _ in range(limit):
            page = await self._get_with_retries(url, params, headers, parse)
            yield page
            cursor = page.next
            if not cursor:
                return
            if cursor in seen_cursors:
                raise UpstreamMalformed("the `next` cursor repeats itself")
            seen_cursors.add(cursor)
            params = {**params, "next": cursor}
        raise UpstreamMalformed(f"more than {limit} pages: runaway `next` chain")

    async def _get_with_retries(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        parse: Callable[[bytes], _PageT],
    ) -> _PageT:
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
                return parse(await self._get(url, params, headers))
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    async def _acquire(self) -> None:
        fresh = time.monotonic() - KEPT_PERMIT_SECONDS
        while self._kept:
            if self._kept.popleft() >= fresh:
                return
        while (wait := await self.rate.try_acquire()) > 0:
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

    async def _get(self, url: str, params: dict[str, str], headers: dict[str, str]) -> bytes:
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
        error = error_for_status(status, retry_after, self.clock())
        if isinstance(error, UpstreamRateLimited):
            log.warning("upstream_rate_limited", status=status, retry_after=error.retry_after)
            await self.rate.pause(error.retry_after)
        if error is not None:
            raise error
        return raw
