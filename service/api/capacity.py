"""A cap on the HTTP API's work in progress, so a flood of requests (unauthenticated
/metrics scrapes, say) costs a bounded share of the process that also polls and delivers."""

from __future__ import annotations

import asyncio

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.common import Handler, json_error

MAX_IN_PROGRESS = 32  # requests handled at once; the others queue
MAX_QUEUED_WAIT = 1.0  # how long one queues before it is answered 503 (busy)
# Answered whatever the load: each is a constant amount of work (readiness is computed once
# a second and shared), and a liveness or readiness probe that got 503 for being queued would
# restart or unroute a healthy process.
UNCAPPED = frozenset({"/healthz", "/readyz"})


def capped(
    limit: int = MAX_IN_PROGRESS, wait: float = MAX_QUEUED_WAIT, uncapped: frozenset[str] = UNCAPPED
) -> Middleware:
    slots = asyncio.Semaphore(limit)

    @web.middleware
    async def cap(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in uncapped:
            return await handler(request)
        try:
            async with asyncio.timeout(wait):
                await slots.acquire()
        except TimeoutError:
            busy = json_error(503, "busy", f"more than {limit} requests in progress; try again")
            busy.headers["Retry-After"] = "1"
            return busy
        try:
            return await handler(request)
        finally:
            slots.release()

    return cap
