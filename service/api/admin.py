"""The admin API (`/admin/...`): endpoints, dead letters and replay, tracked users, poll-now.

Every route needs `Authorization: Bearer <http.admin_token>`; without a configured token the
routes are not served at all.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.common import (
    BadRequest,
    Handler,
    is_text,
    json_error,
    json_object,
    non_empty_string,
    ops,
)


def bearer_auth(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin"):
            # aiohttp reads header bytes that are not UTF-8 as surrogates: encoded back
            # with them, any header compares (unequal) instead of raising
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
            if not hmac.compare_digest(given, expected):
                return json_error(401, "unauthorized", "Authorization: Bearer <admin_token>")
        return await handler(request)

    return check


def _known_endpoint(request: web.Request, endpoint_id: str) -> None:
    if ops(request).settings.endpoint(endpoint_id) is None:
        raise web.HTTPNotFound(reason=f"unknown endpoint {endpoint_id!r}")


async def list_endpoints(request: web.Request) -> web.Response:
    operations = ops(request)
    stores = operations.stores
    out = []
    for endpoint in operations.settings.endpoints:
        health = await stores.endpoints.health(endpoint.id)
        out.append(
            {
                "id": endpoint.id,
                "url": endpoint.url,
                **asdict(health),
                "queue_depth": await stores.queue.depth(endpoint.id),
                "dead_letters": await stores.queue.dead_count(endpoint.id),
            }
        )
    return web.json_response({"endpoints": out})


async def enable_endpoint(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    _known_endpoint(request, endpoint_id)
    health = await ops(request).enable_endpoint(endpoint_id)
    return web.json_response({"id": endpoint_id, **asdict(health)})


async def dead_letters(request: web.Request) -> web.Response:
    endpoint_id = request.query.get("endpoint")
    if not endpoint_id:
        raise BadRequest("query parameter `endpoint` is required")
    _known_endpoint(request, endpoint_id)
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError as e:
        raise BadRequest("`limit` must be an integer") from e
    if not 1 <= limit <= 1000:
        raise BadRequest("`limit` must be between 1 and 1000")
    letters = await ops(request).stores.queue.dead_letters(endpoint_id, limit)
    return web.json_response({"endpoint": endpoint_id, "dead_letters": letters})


async def replay(request: web.Request) -> web.Response:
    body = await json_object(request)
    endpoint_id = non_empty_string(body, "endpoint")
    ids = body.get("ids")
    if ids is not None and (not isinstance(ids, list) or not all(is_text(i) for i in ids)):
        raise BadRequest("`ids` must be a list of event ids")
    _known_endpoint(request, endpoint_id)
    queued = await ops(request).replay(endpoint_id, ids or None)
    return web.json_response({"endpoint": endpoint_id, "queued": queued})


async def list_users(request: web.Request) -> web.Response:
    stores = ops(request).stores
    backed_off = await stores.polls.backed_off_accounts()
    return web.json_response(
        {
            "users": await stores.users.describe(),
            # accounts whose key/account was refused (401/403/412), with when they are retried
            "backed_off_accounts": {a: asdict(b) for a, b in backed_off.items()},
        }
    )


async def add_user(request: web.Request) -> web.Response:
    body = await json_object(request)
    account_id = non_empty_string(body, "account_id")
    user_id = non_empty_string(body, "user_id")
    added = await ops(request).add_user(account_id, user_id)
    return web.json_response(
        {"account_id": account_id, "user_id": user_id, "added": added}, status=201 if added else 200
    )


async def remove_user(request: web.Request) -> web.Response:
    account_id, user_id = request.match_info["account_id"], request.match_info["user_id"]
    operations = ops(request)
    if operations.stores.users.in_config(account_id, user_id):
        return json_error(409, "configured user", "remove it from the config file instead")
    if not await operations.remove_user(account_id, user_id):
        return json_error(404, "not tracked", f"{account_id}/{user_id} is not a run-time user")
    return web.json_response({"account_id": account_id, "user_id": user_id, "removed": True})


async def poll_now(request: web.Request) -> web.Response:
    body = await json_object(request)
    account_id = non_empty_string(body, "account_id")
    user_id = non_empty_string(body, "user_id")
    if not await ops(request).poll_now(account_id, user_id):
        return json_error(404, "not tracked", f"{account_id}/{user_id} is not a tracked user")
    return web.json_response({"account_id": account_id, "user_id": user_id}, status=202)


async def list_accounts(request: web.Request) -> web.Response:
    return web.json_response({"accounts": await ops(request).accounts()})


async def budget(request: web.Request) -> web.Response:
    return web.json_response(await ops(request).budget())


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/accounts", list_accounts)
    app.router.add_get("/admin/budget", budget)
    app.router.add_get("/admin/endpoints", list_endpoints)
    app.router.add_post("/admin/endpoints/{endpoint_id}/enable", enable_endpoint)
    app.router.add_get("/admin/dead-letters", dead_letters)
    app.router.add_post("/admin/dead-letters/replay", replay)
    app.router.add_get("/admin/users", list_users)
    app.router.add_post("/admin/users", add_user)
    app.router.add_delete("/admin/users/{account_id}/{user_id}", remove_user)
    app.router.add_post("/admin/poll", poll_now)
