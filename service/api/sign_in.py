"""The sign-in limit on the API (service.api.sign_in_limit): one limiter for the console's
form and the admin API's bearer token, since both guess the same admin token; the failures
logged as one summary a window, not a line each (a guessing client would flood the log)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from service.api.common import OPS_KEY, ops
from service.api.sign_in_limit import SignInLimiter

log = structlog.get_logger("api")

SIGN_IN_KEY: web.AppKey[SignInLimiter] = web.AppKey("sign_in_limiter", SignInLimiter)


def _client(request: web.Request) -> str:
    # the peer's address: behind a proxy every client shares the proxy's (X-Forwarded-For
    # is whatever the client writes, so it cannot key a limit)
    return request.remote or "unknown"


def wait_before_sign_in(request: web.Request) -> int | None:
    """Seconds the request's client must wait before its token is compared, or None."""
    limiter, now = request.app[SIGN_IN_KEY], ops(request).clock()
    _log_summary(limiter, now)
    return limiter.retry_after(_client(request), now)


def sign_in_failed(request: web.Request) -> None:
    limiter, now = request.app[SIGN_IN_KEY], ops(request).clock()
    _log_summary(limiter, now)
    limiter.failed(_client(request), now)


def sign_in_succeeded(request: web.Request) -> None:
    request.app[SIGN_IN_KEY].succeeded(_client(request))


def _log_summary(limiter: SignInLimiter, now: float) -> None:
    summary = limiter.take_summary(now)
    if summary is not None:
        log.warning(
            "sign_in_failures",
            failures=summary.failures,
            refused=summary.refused,
            clients=summary.clients,
            top_clients=dict(summary.top_clients),
            window_seconds=limiter.window,
        )


async def summaries(app: web.Application) -> AsyncIterator[None]:
    """A cleanup context: a window's summary is logged even when no failure follows it."""

    async def every_window() -> None:
        limiter = app[SIGN_IN_KEY]
        while True:
            await asyncio.sleep(limiter.window)
            _log_summary(limiter, app[OPS_KEY].clock())

    task = asyncio.create_task(every_window(), name="sign-in-summaries")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
