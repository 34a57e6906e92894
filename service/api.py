"""The service's own HTTP API: health, readiness, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from service.app import Service

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    checks = await service.readiness()
    status = 200 if all(checks.values()) else 503
    return web.json_response({"ready": status == 200, "checks": checks}, status=status)


async def metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    try:
        await service.refresh_gauges()
    except RedisError:
        pass  # the gauges keep their last values; /readyz says Redis is away
    return web.Response(
        body=service.metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def json_error(status: int, error: str, detail: object = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def errors_as_json(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return json_error(e.status, e.reason)
    except RedisError:
        return json_error(503, "store unavailable")


def create_api(service: Service) -> web.Application:
    from service.admin import add_admin_routes, bearer_auth
    from service.openapi import build_openapi

    token = service.settings.http.admin_token
    middlewares: list[Middleware] = [errors_as_json]
    if token is not None:
        middlewares.append(bearer_auth(token.get_secret_value()))
    app = web.Application(middlewares=middlewares)
    app[SERVICE_KEY] = service
    document = build_openapi(admin=token is not None)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    if token is not None:
        add_admin_routes(app)
    return app
