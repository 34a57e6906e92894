"""The admin API (`/admin/...`): endpoints, dead letters and replay, tracked users, poll-now,
the delivery log (events and their attempts), test sends and redelivery.

Every route needs `Authorization: Bearer <http.admin_token>`; without a configured token the
routes are not served at all. Times: answers give epoch milliseconds (`..._ms`) and each
event's own ISO 8601 `timestamp`; `since` and `until` take either epoch milliseconds or an
ISO 8601 instant (without an offset: UTC).
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api.common import (
    BadRequest,
    Handler,
    answer,
    body_as,
    instant_param,
    json_error,
    ops,
)
from service.api.sign_in import sign_in_failed, sign_in_succeeded, wait_before_sign_in
from service.contract import admin as m
from service.operations import DEAD_LETTERS_LIMIT, EVENT_FILTERS, MAX_LIMIT


def bearer_auth(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith("/admin"):
            # aiohttp reads header bytes that are not UTF-8 as surrogates: encoded back
            # with them, any header compares (unequal) instead of raising
            given = request.headers.get("Authorization", "").encode("utf-8", "surrogatepass")
            if not given:  # guesses nothing: not counted, and never held back
                return unauthorized()
            wait = wait_before_sign_in(request)
            if wait is not None:
                return too_many_failures(wait)
            if not hmac.compare_digest(given, expected):
                sign_in_failed(request)
                return unauthorized()
            sign_in_succeeded(request)
        return await handler(request)

    return check


def unauthorized() -> web.Response:
    return json_error(401, "unauthorized", "Authorization: Bearer <admin_token>")


def too_many_failures(wait: int) -> web.Response:
    response = json_error(429, "too many failed sign-ins", f"this client may try again in {wait} s")
    response.headers["Retry-After"] = str(wait)
    return response


def _known_endpoint(request: web.Request, endpoint_id: str) -> None:
    if ops(request).settings.endpoint(endpoint_id) is None:
        raise web.HTTPNotFound(reason=f"unknown endpoint {endpoint_id!r}")


def _text(value: object, name: str) -> str | None:
    """An optional text parameter; empty is absent (a form's empty field)."""
    if value is None or value == "":
        return None
    if not m.is_text(value):
        raise BadRequest(f"`{name}` must be a string of valid Unicode")
    return value


def _query(request: web.Request, name: str) -> str | None:
    return _text(request.query.get(name), name)


def _query_limit(request: web.Request, default: int, most: int = MAX_LIMIT) -> int:
    raw = _query(request, "limit")
    if raw is None:
        return default
    if not m.DIGITS.match(raw) or not 1 <= int(raw) <= most:
        raise BadRequest(f"`limit` must be an integer from 1 to {most}")
    return int(raw)


async def list_endpoints(request: web.Request) -> web.Response:
    return answer(
        await ops(request).endpoints(_query_limit(request, 100), _query(request, "cursor"))
    )


async def enable_endpoint(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    _known_endpoint(request, endpoint_id)
    return answer(await ops(request).enable_endpoint(endpoint_id))


async def dead_letters(request: web.Request) -> web.Response:
    endpoint_id = _query(request, "endpoint")
    if endpoint_id is None:
        raise BadRequest("query parameter `endpoint` is required")
    _known_endpoint(request, endpoint_id)
    limit = _query_limit(request, 100, DEAD_LETTERS_LIMIT)
    return answer(await ops(request).dead_letters(endpoint_id, limit))


async def replay(request: web.Request) -> web.Response:
    body = await body_as(request, m.Replay)
    _known_endpoint(request, body.endpoint)
    queued = await ops(request).replay(body.endpoint, body.ids or None)  # []: all of them
    return answer(m.Queued(endpoint=body.endpoint, queued=queued))


async def list_users(request: web.Request) -> web.Response:
    page = await ops(request).users(_query_limit(request, 100), _query(request, "cursor"))
    return answer(page)


async def add_user(request: web.Request) -> web.Response:
    body = await body_as(request, m.NewUser)
    added = await ops(request).add_user(body.account_id, body.user_id)
    added_user = m.UserAdded(account_id=body.account_id, user_id=body.user_id, added=added)
    return answer(added_user, status=201 if added else 200)


async def remove_user(request: web.Request) -> web.Response:
    account_id, user_id = request.match_info["account_id"], request.match_info["user_id"]
    operations = ops(request)
    if operations.stores.users.in_config(account_id, user_id):
        return json_error(409, "configured user", "remove it from the config file instead")
    if not await operations.remove_user(account_id, user_id):
        return json_error(404, "not tracked", f"{account_id}/{user_id} is not a run-time user")
    return answer(m.UserRemoved(account_id=account_id, user_id=user_id, removed=True))


async def poll_now(request: web.Request) -> web.Response:
    user = await body_as(request, m.UserRef)
    if not await ops(request).poll_now(user.account_id, user.user_id):
        detail = f"{user.account_id}/{user.user_id} is not a tracked user"
        return json_error(404, "not tracked", detail)
    return answer(m.PollQueued(account_id=user.account_id, user_id=user.user_id), status=202)


async def list_accounts(request: web.Request) -> web.Response:
    page = await ops(request).accounts_page(
        _query(request, "state"), _query_limit(request, 100), _query(request, "cursor")
    )
    return answer(page)


async def budget(request: web.Request) -> web.Response:
    return answer(await ops(request).budget())


async def list_events(request: web.Request) -> web.Response:
    filters: dict[str, Any] = {name: _query(request, name) for name in EVENT_FILTERS}
    page = await ops(request).events(
        **filters,
        since_ms=instant_param(request.query.get("since"), "since"),
        until_ms=instant_param(request.query.get("until"), "until"),
        limit=_query_limit(request, 50),
        cursor=_query(request, "cursor"),
    )
    return answer(page)


async def get_event(request: web.Request) -> web.Response:
    event_id = _text(request.match_info["event_id"], "event id")
    event = None if event_id is None else await ops(request).event(event_id)
    if event is None:
        return json_error(404, "unknown event", "not in the delivery log (or no longer)")
    return answer(event)


async def test_send(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    _known_endpoint(request, endpoint_id)
    return answer(await ops(request).test_send(endpoint_id))


async def redeliver(request: web.Request) -> web.Response:
    endpoint_id = request.match_info["endpoint_id"]
    _known_endpoint(request, endpoint_id)
    body = await body_as(request, m.Redeliver)
    queued = await ops(request).redeliver(
        endpoint_id, since_ms=body.since, until_ms=body.until, outcome=body.outcome
    )
    return answer(m.Queued(endpoint=endpoint_id, queued=queued))


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/admin/accounts", list_accounts)
    app.router.add_get("/admin/budget", budget)
    app.router.add_get("/admin/endpoints", list_endpoints)
    app.router.add_post("/admin/endpoints/{endpoint_id}/enable", enable_endpoint)
    app.router.add_post("/admin/endpoints/{endpoint_id}/test", test_send)
    app.router.add_post("/admin/endpoints/{endpoint_id}/redeliver", redeliver)
    app.router.add_get("/admin/events", list_events)
    app.router.add_get("/admin/events/{event_id}", get_event)
    app.router.add_get("/admin/dead-letters", dead_letters)
    app.router.add_post("/admin/dead-letters/replay", replay)
    app.router.add_get("/admin/users", list_users)
    app.router.add_post("/admin/users", add_user)
    app.router.add_delete("/admin/users/{account_id}/{user_id}", remove_user)
    app.router.add_post("/admin/poll", poll_now)
