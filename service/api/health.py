"""Health, readiness, metrics: served with or without the admin API."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.common import answer, ops
from service.contract.admin import Liveness


async def healthz(request: web.Request) -> web.Response:
    return answer(Liveness(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    readiness = await ops(request).readiness()
    return answer(readiness, 200 if readiness.ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body = await ops(request).scrape()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def add_health_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
