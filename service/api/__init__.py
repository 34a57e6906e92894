"""The service's own HTTP API: health, readiness, metrics, the OpenAPI document, and the
admin routes and the operator console (/ui) when an admin token is configured."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.admin import add_admin_routes, bearer_auth
from service.api.capacity import capped
from service.api.common import OPS_KEY, errors_as_json
from service.api.console import add_console, console_guard
from service.api.health import add_health_routes
from service.api.openapi import build_openapi
from service.api.sign_in import SIGN_IN_KEY, summaries
from service.api.sign_in_limit import SignInLimiter
from service.operations import Operations


def create_api(operations: Operations) -> web.Application:
    token = operations.settings.http.admin_token
    middlewares: list[Middleware] = [errors_as_json]
    if token is not None:
        middlewares.append(bearer_auth(token.get_secret_value()))
    # after the token check: a request without the token is refused without queueing
    middlewares.append(capped())
    if token is not None:
        # innermost: the console answers its own errors as HTML pages
        middlewares.append(console_guard)
    app = web.Application(middlewares=middlewares)
    app[OPS_KEY] = operations
    document = build_openapi(admin=token is not None)

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(document)

    add_health_routes(app)
    app.router.add_get("/openapi.json", openapi)
    if token is not None:
        app[SIGN_IN_KEY] = SignInLimiter()
        app.cleanup_ctx.append(summaries)
        add_admin_routes(app)
        add_console(app, token.get_secret_value(), operations.clock)
    return app
