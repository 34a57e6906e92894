"""The console's pages and the changes an operator makes from them. Every page reads what
the admin API reads (through Operations); every change is a POST that redirects back with
what it did."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, get_args
from urllib.parse import quote, urlencode

import aiohttp_jinja2
import structlog
from aiohttp import web

from service.accounts_view import STATES
from service.api.common import BadRequest, instant_param, ops, parsed_as
from service.api.console.guard import (
    FLASH_COOKIE,
    LOGIN,
    PREFIX,
    SESSION_COOKIE,
    SESSIONS_KEY,
    over_https,
    session_of,
    text_field,
)
from service.api.console.session import SESSION_SECONDS
from service.api.console.stats import HourStats, last_hour
from service.api.sign_in import sign_in_failed, sign_in_succeeded, wait_before_sign_in
from service.config import EndpointSettings
from service.contract import admin as m
from service.operations import EVENT_FILTERS, MAX_LIMIT, Operations
from service.store.log import RECENT_ATTEMPTS

log = structlog.get_logger("console")

STATS_READ = RECENT_ATTEMPTS  # all the log keeps of an endpoint's attempts in order
ATTEMPTS_SHOWN = 50
DEAD_SHOWN = 100
EVENTS_PAGE = 50
USERS_SHOWN = 200
ACCOUNTS_PAGE = 100
OVERVIEW_ACCOUNTS = 20  # the overview's first accounts; the accounts page has every one
OUTCOMES = get_args(m.Outcome)  # the search form's choices


def endpoint_url(endpoint_id: str) -> str:
    return f"{PREFIX}/endpoints/{quote(endpoint_id, safe='')}"


def event_url(event_id: str) -> str:
    return f"{PREFIX}/events/{quote(event_id, safe='')}"


def events_url(**query: str) -> str:
    return f"{PREFIX}/events?{urlencode({k: v for k, v in query.items() if v})}"


def _now_ms(operations: Operations) -> int:
    return int(operations.clock() * 1000)


def page(
    request: web.Request, template: str, context: dict[str, Any], status: int = 200
) -> web.Response:
    """A signed-in page: the CSRF token for its forms, and the message a change left."""
    sessions = request.app[SESSIONS_KEY]
    session = session_of(request)
    assert session is not None  # the guard lets no one else through
    flash = sessions.open_flash(session, request.cookies.get(FLASH_COOKIE))
    response = aiohttp_jinja2.render_template(
        template,
        request,
        {
            **context,
            "csrf": sessions.csrf_token(session),
            "flash": flash,
            "signed_in": True,
            "now_ms": _now_ms(ops(request)),
        },
        status=status,
    )
    if FLASH_COOKIE in request.cookies:
        response.del_cookie(FLASH_COOKIE, path=PREFIX)
    return response


def done(request: web.Request, location: str, message: str) -> web.HTTPSeeOther:
    """Back to a page (POST, redirect, GET: a reload repeats nothing), with a message."""
    session = session_of(request)
    assert session is not None
    redirect = web.HTTPSeeOther(location)
    redirect.set_cookie(
        FLASH_COOKIE,
        request.app[SESSIONS_KEY].seal_flash(session, message),
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )
    return redirect


def _known_endpoint(request: web.Request) -> EndpointSettings:
    endpoint_id = request.match_info["endpoint_id"]
    endpoint = ops(request).settings.endpoint(endpoint_id)
    if endpoint is None:
        raise web.HTTPNotFound(reason=f"There is no endpoint {endpoint_id!r}.")
    return endpoint


# -- signing in and out ----------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    if session_of(request) is not None:
        raise web.HTTPSeeOther(PREFIX)
    return aiohttp_jinja2.render_template("login.html", request, {"error": None})


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    sessions = request.app[SESSIONS_KEY]
    wait = wait_before_sign_in(request)
    if wait is not None:
        error = f"Too many failed sign-ins from here: try again in {wait} s."
        response = aiohttp_jinja2.render_template(
            "login.html", request, {"error": error}, status=429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    if not sessions.token_matches(text_field(form, "token")):
        sign_in_failed(request)  # logged once a window, with the others
        return aiohttp_jinja2.render_template(
            "login.html", request, {"error": "That is not the admin token."}, status=401
        )
    sign_in_succeeded(request)
    session = sessions.issue()
    log.info("console_signed_in", remote=request.remote)
    redirect = web.HTTPSeeOther(PREFIX)
    redirect.set_cookie(
        SESSION_COOKIE,
        session.cookie,
        max_age=SESSION_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="Strict",
        secure=over_https(request),
    )
    raise redirect


async def logout(request: web.Request) -> web.StreamResponse:
    session = session_of(request)
    assert session is not None  # the guard lets no one else post
    # on the server, not only in this browser: a copy of the cookie stops working too
    seconds_left = session.expires - int(ops(request).clock())
    await ops(request).stores.signed_out.sign_out(session.nonce, seconds_left)
    log.info("console_signed_out", remote=request.remote)
    redirect = web.HTTPSeeOther(LOGIN)
    redirect.del_cookie(SESSION_COOKIE, path=PREFIX)
    redirect.del_cookie(FLASH_COOKIE, path=PREFIX)
    raise redirect


async def trailing_slash(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther(PREFIX)


# -- the overview ------------------------------------------------------------------------


async def _last_hour(operations: Operations, endpoint_id: str, now_ms: int) -> HourStats:
    attempts = await operations.endpoint_attempts(endpoint_id, STATS_READ)
    return last_hour(attempts, now_ms, read_limit=STATS_READ)


async def _all_endpoints(operations: Operations) -> list[m.Endpoint]:
    """Every configured endpoint, as `GET /admin/endpoints` pages them."""
    found, cursor = [], None
    while True:
        got = await operations.endpoints(MAX_LIMIT, cursor)
        found += got.endpoints
        cursor = got.next_cursor
        if cursor is None:
            return found


async def overview(request: web.Request) -> web.StreamResponse:
    operations = ops(request)
    now_ms = _now_ms(operations)
    endpoints = await _all_endpoints(operations)
    hours = [await _last_hour(operations, e.id, now_ms) for e in endpoints]
    recent = await operations.events(limit=10)
    return page(
        request,
        "overview.html",
        {
            "endpoints": list(zip(endpoints, hours, strict=True)),
            "accounts": await operations.accounts_page(limit=OVERVIEW_ACCOUNTS),
            "budget": await operations.budget(),
            "upstream": await operations.upstream(),
            "recent": recent.items,
        },
    )


# -- one endpoint ------------------------------------------------------------------------


async def endpoint_page(request: web.Request) -> web.StreamResponse:
    endpoint_id = _known_endpoint(request).id
    operations = ops(request)
    now_ms = _now_ms(operations)
    hour_ago = datetime.fromtimestamp(now_ms / 1000 - 3600, UTC).strftime("%Y-%m-%dT%H:%M")
    # newest first: the last hour's figures read them all, the page shows the newest
    attempts = await operations.endpoint_attempts(endpoint_id, STATS_READ)
    return page(
        request,
        "endpoint.html",
        {
            "endpoint": await operations.endpoint(endpoint_id),
            "hour": last_hour(attempts, now_ms, read_limit=STATS_READ),
            "attempts": attempts[:ATTEMPTS_SHOWN],
            "dead": (await operations.dead_letters(endpoint_id, DEAD_SHOWN)).dead_letters,
            "since_default": hour_ago,
            "endpoint_events_url": events_url(endpoint=endpoint_id),
        },
    )


async def enable(request: web.Request) -> web.StreamResponse:
    endpoint_id = _known_endpoint(request).id
    health = await ops(request).enable_endpoint(endpoint_id)
    raise done(request, endpoint_url(endpoint_id), f"{endpoint_id} is {health.status.value}.")


async def replay(request: web.Request) -> web.StreamResponse:
    endpoint_id = _known_endpoint(request).id
    event_id = text_field(await request.post(), "event_id")
    queued = await ops(request).replay(endpoint_id, [event_id] if event_id else None)
    what = f"{event_id}" if event_id else "all dead letters"
    raise done(request, endpoint_url(endpoint_id), f"Replayed {what}: {queued} queued again.")


async def test_send(request: web.Request) -> web.StreamResponse:
    endpoint_id = _known_endpoint(request).id
    outcome = await ops(request).test_send(endpoint_id)
    answer = f"HTTP {outcome.status}" if outcome.status is not None else "no answer"
    if outcome.error:
        answer += f" ({outcome.error})"
    verdict = "delivered" if outcome.delivered else "not delivered"
    raise done(
        request,
        endpoint_url(endpoint_id),
        f"Test event {outcome.event_id} {verdict}: {answer} in {outcome.duration_ms} ms.",
    )


async def redeliver(request: web.Request) -> web.StreamResponse:
    endpoint_id = _known_endpoint(request).id
    form = await request.post()
    # read as the API reads its body (a `datetime-local` value is ISO 8601 without an
    # offset: UTC, as the page says), so both refuse the same input with the same words
    fields = {name: text_field(form, name).strip() for name in ("since", "until", "outcome")}
    body = parsed_as(m.Redeliver, {name: text for name, text in fields.items() if text})
    queued = await ops(request).redeliver(
        endpoint_id, since_ms=body.since, until_ms=body.until, outcome=body.outcome
    )
    raise done(request, endpoint_url(endpoint_id), f"{queued} events queued again.")


# -- events ------------------------------------------------------------------------------

_FILTERS = EVENT_FILTERS


async def events_page(request: web.Request) -> web.StreamResponse:
    operations = ops(request)
    query = request.query
    filters = {name: query.get(name, "").strip() for name in (*_FILTERS, "since", "until")}
    if filters["endpoint"] and operations.settings.endpoint(filters["endpoint"]) is None:
        raise BadRequest(f"there is no endpoint {filters['endpoint']!r}")
    since_ms = instant_param(filters["since"], "since")
    until_ms = instant_param(filters["until"], "until")
    # an unknown outcome and `since` after `until` are refused by Operations.events, as the
    # admin API's are
    cursor = query.get("cursor") or None
    found = await operations.events(
        **{name: filters[name] or None for name in _FILTERS},
        since_ms=since_ms,
        until_ms=until_ms,
        limit=EVENTS_PAGE,
        cursor=cursor,
    )
    next_cursor = found.next_cursor
    return page(
        request,
        "events.html",
        {
            "filters": filters,
            "endpoints": [e.id for e in operations.settings.endpoints],
            "outcomes": OUTCOMES,
            "events": found.items,
            "next_url": events_url(**filters, cursor=next_cursor) if next_cursor else None,
            "searched": any(filters.values()),
        },
    )


async def event_page(request: web.Request) -> web.StreamResponse:
    event_id = request.match_info["event_id"]
    found = await ops(request).event(event_id)
    if found is None:
        raise web.HTTPNotFound(reason=f"There is no event {event_id!r} in the delivery log.")
    return page(
        request,
        "event.html",
        {
            "event": found,
            "user_events_url": events_url(
                account_id=found.account_id or "", user_id=found.user_id or ""
            ),
        },
    )


# -- tracked users -----------------------------------------------------------------------


async def users_page(request: web.Request) -> web.StreamResponse:
    """Without a search, a page of users (a cursor to the next); with one, the first
    USERS_SHOWN users whose user or account id contains it, found by reading every page."""
    operations = ops(request)
    search = request.query.get("q", "").strip()
    cursor = request.query.get("cursor") or None
    if not search:
        found = await operations.users(limit=USERS_SHOWN, cursor=cursor)
        next_cursor = found.next_cursor
        users, matching = found.users, None
    else:
        needle, users, matching, cursor, next_cursor = search.casefold(), [], 0, None, None
        while True:
            found = await operations.users(limit=500, cursor=cursor)
            for user in found.users:
                if needle in user.user_id.casefold() or needle in user.account_id.casefold():
                    matching += 1
                    if len(users) < USERS_SHOWN:
                        users.append(user)
            cursor = found.next_cursor
            if cursor is None:
                break
    return page(
        request,
        "users.html",
        {
            "q": search,
            "matching": matching,
            "users": users,
            "next_url": (
                f"{PREFIX}/users?{urlencode({'cursor': next_cursor})}" if next_cursor else None
            ),
        },
    )


async def poll_now(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    account_id, user_id = text_field(form, "account_id"), text_field(form, "user_id")
    back = f"{PREFIX}/users?{urlencode({'q': text_field(form, 'q')})}"
    if not account_id or not user_id:
        raise BadRequest("account_id and user_id are needed")
    if await ops(request).poll_now(account_id, user_id):
        raise done(request, back, f"{account_id}/{user_id} is polled now.")
    raise done(request, back, f"{account_id}/{user_id} is not tracked.")


# -- accounts ----------------------------------------------------------------------------


def accounts_url(**query: str | None) -> str:
    return f"{PREFIX}/accounts?{urlencode({k: v for k, v in query.items() if v})}"


async def accounts_page(request: web.Request) -> web.StreamResponse:
    """A page of the accounts, of one state when asked, with a cursor to the next."""
    state = request.query.get("state", "").strip() or None
    if state is not None and state not in STATES:
        raise BadRequest(f"state: one of {', '.join(STATES)}")
    found = await ops(request).accounts_page(
        state, ACCOUNTS_PAGE, request.query.get("cursor") or None
    )
    next_cursor = found.next_cursor
    return page(
        request,
        "accounts.html",
        {
            "state": state,
            "states": [(s, accounts_url(state=s)) for s in STATES],
            "all_url": accounts_url(),
            "accounts": found.accounts,
            "next_url": accounts_url(state=state, cursor=next_cursor) if next_cursor else None,
        },
    )


def add_console_routes(app: web.Application) -> None:
    app.router.add_get(PREFIX, overview)
    app.router.add_get(PREFIX + "/", trailing_slash)
    app.router.add_get(LOGIN, login_form)
    app.router.add_post(LOGIN, login)
    app.router.add_post(PREFIX + "/logout", logout)
    app.router.add_get(PREFIX + "/endpoints/{endpoint_id}", endpoint_page)
    app.router.add_post(PREFIX + "/endpoints/{endpoint_id}/enable", enable)
    app.router.add_post(PREFIX + "/endpoints/{endpoint_id}/replay", replay)
    app.router.add_post(PREFIX + "/endpoints/{endpoint_id}/test", test_send)
    app.router.add_post(PREFIX + "/endpoints/{endpoint_id}/redeliver", redeliver)
    app.router.add_get(PREFIX + "/events", events_page)
    app.router.add_get(PREFIX + "/events/{event_id}", event_page)
    app.router.add_get(PREFIX + "/users", users_page)
    app.router.add_post(PREFIX + "/users/poll", poll_now)
    app.router.add_get(PREFIX + "/accounts", accounts_page)
