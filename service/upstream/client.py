"""The StackOne client: a user's or an account's records of a tracked resource (assignments,
completions) and an account's users, page by page, within the shared budget."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Protocol, TypeVar
from urllib.parse import quote, urlsplit

import aiohttp
import structlog
from opentelemetry.trace import SpanKind
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from service import tracing
from service.config import StackOneSettings
from service.errors import (
    UpstreamError,
    UpstreamMalformed,
    UpstreamProviderLimited,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from service.httpspec import (
    USER_AGENT,
    StatusClass,
    http_date,
    retry_after_seconds,
    status_class,
)
from service.metrics import Metrics
from service.resources import ASSIGNMENTS, Resource
from service.timefmt import iso_ms
from service.upstream.accounts import AccountPauses, AccountSlots
from service.upstream.model import (
    LinkedAccountPage,
    Page,
    UserPage,
    has_provider_errors,
    max_page_records,
    parse_linked_account_page,
    parse_page,
    parse_user_page,
)
from service.user_ids import DOT_SEGMENTS

log = structlog.get_logger("upstream")

DEFAULT_RETRY_AFTER = 5.0  # a 429/408 without a readable Retry-After pauses this long
# A permit handed in with other work (`keep_permit`) is good for this long: one that stayed
# unused (its poll failed before its first request) must not add to a later burst.
KEPT_PERMIT_SECONDS = 1.0
MAX_RETRY_AFTER = 600.0
MAX_PAGE_BYTES = 32 * 1024 * 1024  # 100 records are far below this; a runaway body is not
# A page may take this much per record it may hold (max_page_records): an assignment is about
# 1 KiB, so a small page_size bounds the body (and the time parsing it holds the loop) too.
MAX_RECORD_BYTES = 128 * 1024
# A `next` cursor longer than this is malformed (the read fails, and is retried later): a
# provider's cursors are opaque tokens of tens of characters, and a query string longer than
# about 8 KiB is refused by most servers anyway (a cursor may take 3 characters per byte
# URL-encoded). 1 MB cursors, kept for 400 pages, grew the process by 400 MB.
MAX_CURSOR_CHARS = 4096
# A `next` chain that loops is seen by the digests of this many latest cursors; a longer loop
# ends at the read's page bound.
RECENT_CURSORS = 1000
# A read says how far it got every this many pages or seconds, whichever comes first.
LONG_READ_PAGES = 100
LONG_READ_SECONDS = 30.0
NOT_IMPLEMENTED = 501
TOO_MANY_REQUESTS = 429
ACCOUNT_USERS = "/unified/lms/users"
LINKED_ACCOUNTS = "/accounts"
# what the linked-account listing's requests go by where an account's would (its slots, its
# logs): no account's, as no quoted account id is `*`
NO_ACCOUNT = "*"


class _Paged(Protocol):
    @property
    def next(self) -> str | None: ...

    @property
    def listed(self) -> int: ...

    served_at: datetime | None


_PageT = TypeVar("_PageT", bound=_Paged)


class RequestRate(Protocol):
    """The API key's budget, shared by every process (store.limits.SharedRate)."""

    async def try_acquire(self, yielding: bool = False) -> float:
        """0 when a request may go now, else seconds to wait before asking again; a
        `yielding` one lets the others' go first while the key is busy."""

    async def pause(self, seconds: float) -> None:
        """Every process holds its requests for `seconds` (a 429's Retry-After)."""


def error_for_status(
    status: int, retry_after: str | None, now: float, body: bytes = b""
) -> UpstreamError | None:
    """Map a non-2xx upstream status (and its body) to the error that says what to do
    about it."""
    kind = status_class(status)
    if kind is StatusClass.SUCCESS:
        return None
    message = f"upstream answered {status}"
    if kind is StatusClass.RATE_LIMITED:
        pause = retry_after_seconds(retry_after, now=now, cap=MAX_RETRY_AFTER)
        seconds = DEFAULT_RETRY_AFTER if pause is None else pause
        if status == TOO_MANY_REQUESTS and has_provider_errors(body):
            # the account's provider, passed on by StackOne: that account waits, not the key
            return UpstreamProviderLimited(f"{message} for its provider", retry_after=seconds)
        return UpstreamRateLimited(message, status=status, retry_after=seconds)
    if kind in (StatusClass.ACCOUNT_REJECTED, StatusClass.NOT_FOUND):
        return UpstreamRejected(message, status=status)
    if status == NOT_IMPLEMENTED:  # an endpoint the provider lacks: retrying cannot help
        return UpstreamError(message, status=status)
    if kind is StatusClass.SERVER_ERROR:
        return UpstreamUnavailable(message, status=status)
    return UpstreamError(message, status=status)


class _RecentCursors:
    """The digests of a read's latest cursors, to see its `next` chain loop. A cursor itself
    is not kept: a provider's can be large."""

    def __init__(self) -> None:
        self._digests: dict[bytes, None] = {}  # in insertion order: the oldest first

    def repeats(self, cursor: str) -> bool:
        """Whether `cursor` was seen lately; it is remembered either way."""
        raw = cursor.encode("utf-8", "surrogatepass")  # `json` may read a lone surrogate
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest in self._digests:
            return True
        self._digests[digest] = None
        if len(self._digests) > RECENT_CURSORS:
            del self._digests[next(iter(self._digests))]
        return False


class _LongRead:
    """A read's progress, logged while it runs long (never one line a page, never a
    cursor): an endless `next` chain ran 876 requests in 46 s without a word."""

    def __init__(self, account_id: str, path: str) -> None:
        self.account_id = account_id
        self.path = path
        self.pages = 0
        self.records = 0
        self._started = self._said_at = time.monotonic()
        self._said_pages = 0

    def add(self, page: _Paged) -> None:
        self.pages += 1
        self.records += page.listed
        now = time.monotonic()
        due = self.pages - self._said_pages >= LONG_READ_PAGES
        if not due and now - self._said_at < LONG_READ_SECONDS:
            return
        self._said_at, self._said_pages = now, self.pages
        log.info(
            "upstream_long_read",
            account_id=self.account_id,
            path=self.path,
            pages=self.pages,
            records=self.records,
            seconds=round(now - self._started, 1),
        )


_exponential = wait_random_exponential(multiplier=0.5, max=30)


def _backoff(state: RetryCallState) -> float:
    """No extra wait after a 429/408: the shared pause it set already holds every process."""
    error = state.outcome.exception() if state.outcome else None
    return 0.0 if isinstance(error, UpstreamRateLimited) else _exponential(state)


def _request_attributes(url: str) -> dict[str, str | int] | None:
    """An upstream request's span attributes: its path, never its query (the cursor and
    filters are there); None while tracing is off (nothing to compute)."""
    if not tracing.enabled():
        return None
    parts = urlsplit(url)
    return {
        "http.request.method": "GET",
        "url.path": parts.path,
        "server.address": parts.hostname or "",
        "server.port": parts.port or (443 if parts.scheme == "https" else 80),
    }


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
        yields: Callable[[str], bool] | None = None,
    ) -> None:
        self.session = session
        self.settings = settings
        self.rate = rate
        self.metrics = metrics
        self.attempts = attempts
        self.sleep = sleep
        self.clock = clock
        # whether an account's requests yield to others' at the key's shared rate (all but
        # the budget planner's accounts read first, while the key is oversubscribed)
        self.yields = yields
        token = base64.b64encode(f"{settings.api_key.get_secret_value()}:".encode()).decode()
        self._auth = f"Basic {token}"
        self._kept: deque[float] = deque()  # when each permit handed in was granted
        # per account: at most ACCOUNT_IN_FLIGHT requests at a time, none while paused
        self._slots = AccountSlots()
        self._paused = AccountPauses()

    def keep_permit(self) -> None:
        """A permit of the budget was granted along with other work (a poll gets the first
        request's with the user's state, in the same Redis round trip): the next request
        takes it instead of asking for one. Permits are interchangeable, so whichever request
        takes it, the budget holds."""
        self._kept.append(time.monotonic())

    def __repr__(self) -> str:
        return f"StackOneClient(base_url={self.settings.base_url!r})"

    async def pages(
        self,
        account_id: str,
        user_id: str,
        updated_after: datetime | None,
        resource: Resource = ASSIGNMENTS,
    ) -> AsyncIterator[Page]:
        """Every page of one user's records of `resource`, following `next` until it is
        empty.

        A user id `.` or `..` is never requested: the HTTP client resolves it as a dot
        segment (even percent-encoded), and `..` asked for the whole account's assignments
        as that user's. Ids are refused where they enter (service/user_ids.py); one
        tracked before that rule fails its poll here, as an unknown user does."""
        if user_id in DOT_SEGMENTS:
            raise UpstreamRejected(f"user id {user_id!r} cannot be a URL path segment")
        path = resource.user_path(quote(user_id, safe=""))
        parse = partial(parse_page, resource=resource)
        async for page in self._walk(path, account_id, updated_after, parse, per_user=True):
            yield page

    async def account_pages(
        self, account_id: str, updated_after: datetime | None, resource: Resource = ASSIGNMENTS
    ) -> AsyncIterator[Page]:
        """Every page of the account's records of `resource`, of all its users (its change
        feed)."""
        parse = partial(parse_page, resource=resource)
        walk = self._walk(resource.account_path, account_id, updated_after, parse, per_user=False)
        async for page in walk:
            yield page

    async def user_pages(
        self, account_id: str, updated_after: datetime | None
    ) -> AsyncIterator[UserPage]:
        """Every page of the account's user listing."""
        walk = self._walk(ACCOUNT_USERS, account_id, updated_after, parse_user_page, per_user=False)
        async for page in walk:
            yield page

    async def linked_account_pages(
        self, providers: list[str] | None, origin_owner_id: str | None
    ) -> AsyncIterator[LinkedAccountPage]:
        """Every page of the project's linked accounts (`GET /accounts`, no `x-account-id`),
        by page number until one is shorter than asked; the filters are asked for, but an
        upstream's filters are not to be trusted (the caller checks again)."""
        url = f"{self.settings.base_url}{LINKED_ACCOUNTS}"
        size = self.settings.page_size
        params: dict[str, str] = {"page_size": str(size)}
        if providers:
            params["providers"] = ",".join(providers)
        if origin_owner_id is not None:
            params["origin_owner_id"] = origin_owner_id
        headers = {
            "Authorization": self._auth,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        progress = _LongRead(NO_ACCOUNT, LINKED_ACCOUNTS)
        limit = self.settings.max_account_pages
        for number in range(1, limit + 1):
            params = {**params, "page": str(number)}
            parse = parse_linked_account_page
            page = await self._get_with_retries(url, params, headers, parse, NO_ACCOUNT)
            progress.add(page)
            yield page
            if page.listed < size:
                return
        raise UpstreamMalformed(
            f"more than {limit} pages of linked accounts (stackone.max_account_pages)"
        )

    async def _walk(
        self,
        path: str,
        account_id: str,
        updated_after: datetime | None,
        parse: Callable[[bytes, int], _PageT],
        *,
        per_user: bool,
    ) -> AsyncIterator[_PageT]:
        """Every page of one listing, following `next` until it is empty; a chain longer
        than a user's (or an account's) `max_pages` is a runaway cursor."""
        if per_user:
            limit, limit_key = self.settings.max_pages, "stackone.max_pages"
        else:
            limit, limit_key = self.settings.max_account_pages, "stackone.max_account_pages"
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
        seen = _RecentCursors()
        progress = _LongRead(account_id, path)
        for _ in range(limit):
            page = await self._get_with_retries(url, params, headers, parse, account_id)
            progress.add(page)
            yield page
            cursor = page.next
            if not cursor:
                return
            if len(cursor) > MAX_CURSOR_CHARS:
                raise UpstreamMalformed(
                    f"a `next` cursor of {len(cursor)} characters (at most {MAX_CURSOR_CHARS})"
                )
            if seen.repeats(cursor):
                raise UpstreamMalformed("the `next` cursor repeats itself")
            params = {**params, "next": cursor}
        raise UpstreamMalformed(f"more than {limit} pages ({limit_key}): runaway `next` chain")

    async def _get_with_retries(
        self,
        url: str,
        params: dict[str, str],
        headers: dict[str, str],
        parse: Callable[[bytes, int], _PageT],
        account_id: str,
    ) -> _PageT:
        # Rate-limit answers wait out the shared pause inside _acquire; 5xx and broken
        # connections back off exponentially with jitter. Both count as attempts.
        retrying = AsyncRetrying(
            retry=retry_if_exception_type((UpstreamUnavailable, UpstreamRateLimited)),
            wait=_backoff,
            stop=stop_after_attempt(self.attempts),
            sleep=self.sleep,
            reraise=True,
            before_sleep=self._say_retry(url, account_id),
        )
        page_size = self.settings.page_size
        async for attempt in retrying:
            with attempt:
                raw, date = await self._get(url, params, headers, account_id)
                page = parse(raw, page_size)
                page.served_at = http_date(date)
                return page
        raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover

    def _say_retry(self, url: str, account_id: str) -> Callable[[RetryCallState], None]:
        """A line for each attempt that failed and is retried: a slow upstream (a byte every
        few seconds) was silent until every attempt had timed out, minutes later."""
        path = url.removeprefix(self.settings.base_url)

        def say(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome else None
            pause = state.next_action.sleep if state.next_action else 0.0
            if isinstance(error, UpstreamRateLimited):  # the shared pause holds it
                pause = error.retry_after
            log.warning(
                "upstream_retry",
                account_id=account_id,
                path=path,
                attempt=state.attempt_number,
                attempts=self.attempts,
                error=str(error),
                error_type=type(error).__name__,
                status=getattr(error, "status", None),
                wait=round(pause, 3),
            )

        return say

    async def _acquire(self, account_id: str) -> None:
        fresh = time.monotonic() - KEPT_PERMIT_SECONDS
        while self._kept:
            if self._kept.popleft() >= fresh:
                return
        yielding = self.yields is not None and self.yields(account_id)
        while (wait := await self.rate.try_acquire(yielding)) > 0:
            self.metrics.throttle_wait.labels("upstream").inc(wait)
            await self.sleep(wait)

    @staticmethod
    async def _body(response: aiohttp.ClientResponse, limit: int) -> bytes:
        body = bytearray()
        async for chunk in response.content.iter_chunked(256 * 1024):
            body += chunk
            if len(body) > limit:
                raise UpstreamMalformed(f"a page larger than {limit} bytes")
        return bytes(body)

    async def _get(
        self, url: str, params: dict[str, str], headers: dict[str, str], account_id: str
    ) -> tuple[bytes, str | None]:
        """The body of a 2xx answer and its `Date` header; else the error it means. At most
        ACCOUNT_IN_FLIGHT of one account's requests wait for the budget or run at a time,
        so a slow provider holds its own account's requests, not the process's."""
        async with self._slots.slot(account_id):
            # a read that waited here behind the one its provider limited does not ask again
            if (left := self._paused.left(account_id, self.clock())) > 0:
                raise UpstreamProviderLimited(
                    "the account's provider asked it to wait", retry_after=left
                )
            await self._acquire(account_id)
            raw, status, retry_after, date = await self._request(url, params, headers)
        error = error_for_status(status, retry_after, self.clock(), raw)
        if isinstance(error, UpstreamProviderLimited):
            now = self.clock()
            self._paused.pause(account_id, now + error.retry_after, now)
            self.metrics.upstream_pauses.labels("provider").inc()
            log.warning(
                "provider_rate_limited", account_id=account_id, retry_after=error.retry_after
            )
        elif isinstance(error, UpstreamRateLimited):
            self.metrics.upstream_pauses.labels("key").inc()
            log.warning("upstream_rate_limited", status=status, retry_after=error.retry_after)
            await self.rate.pause(error.retry_after)
        if error is not None:
            raise error
        return raw, date

    async def _request(
        self, url: str, params: dict[str, str], headers: dict[str, str]
    ) -> tuple[bytes, int, str | None, str | None]:
        """One request: its body, status, `Retry-After` and `Date`."""
        # `total` bounds the whole request, the body's reading too: an upstream that answers
        # a byte every few seconds times out after request_timeout, not when it is done
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        limit = min(MAX_PAGE_BYTES, max_page_records(self.settings.page_size) * MAX_RECORD_BYTES)
        with tracing.span("GET", _request_attributes(url), kind=SpanKind.CLIENT) as current:
            try:
                async with self.session.get(
                    url, params=params, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    current.set_attribute("http.response.status_code", response.status)
                    raw = await self._body(response, limit)
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
                    date = response.headers.get("Date")
            except TimeoutError as e:
                self.metrics.upstream_requests.labels("timeout").inc()
                raise UpstreamUnavailable("upstream request timed out") from e
            except aiohttp.ClientError as e:
                self.metrics.upstream_requests.labels("error").inc()
                raise UpstreamUnavailable(f"upstream connection failed: {type(e).__name__}") from e
            if status >= 400:
                tracing.failed(current, str(status))
        self.metrics.upstream_requests.labels(str(status)).inc()
        return raw, status, retry_after, date
