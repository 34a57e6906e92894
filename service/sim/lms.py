"""The simulated StackOne LMS over HTTP: the unified list endpoints plus a `/_sim/` control API.

Served: `GET /unified/lms/users/{id}/assignments` (one user's assignments),
`GET /unified/lms/assignments` (every assignment of the account), `GET /unified/lms/users`,
the completions of one user and of the account (`/unified/lms/users/{id}/completions`,
`/unified/lms/completions`), and `GET /accounts` (the project's linked accounts).
Requests, auth and faults are handled in `service.sim.lms_state`, records and users in
`service.sim.records`, paging in `service.sim.listing`, fault settings in `service.sim.faults`;
this module only moves requests in and out of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from service.sim.faults import Faults, FaultSpec, RequestRecord
from service.sim.lms_state import (
    ACCOUNT_ASSIGNMENTS_PATH,
    ACCOUNT_COMPLETIONS_PATH,
    ACCOUNTS_PATH,
    LIST_PATH,
    USER_COMPLETIONS_PATH,
    USERS_PATH,
    NotFoundError,
    SimLMS,
    SimResponse,
    basic_auth_header,
    iso_ms,
    parse_iso_ms,
)

__all__ = [
    "FaultSpec",
    "Faults",
    "RequestRecord",
    "SimLMS",
    "SimResponse",
    "basic_auth_header",
    "churn_forever",
    "create_app",
    "iso_ms",
    "parse_iso_ms",
    "run_standalone",
    "start_sim_server",
]

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json_error(status: int, error: str, detail: Any) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


@web.middleware
async def _control_errors(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Bad control-API input becomes a JSON 400/404 instead of an HTML 500."""
    try:
        return await handler(request)
    except NotFoundError as exc:
        return _json_error(404, "not_found", str(exc.args[0] if exc.args else exc))
    except ValueError as exc:  # includes json.JSONDecodeError
        return _json_error(400, "bad_request", str(exc))


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    body = json.loads(await request.read())
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


class _Routes:
    """Request handlers bound to one SimLMS."""

    def __init__(self, lms: SimLMS) -> None:
        self.lms = lms

    async def list_assignments(self, request: web.Request) -> web.Response:
        user_id = request.match_info["id"]
        return await self._serve(
            request, self.lms.handle_list(user_id, request.headers, request.query)
        )

    async def list_account_assignments(self, request: web.Request) -> web.Response:
        answer = self.lms.handle_account_assignments(request.headers, request.query)
        return await self._serve(request, answer)

    async def list_user_completions(self, request: web.Request) -> web.Response:
        answer = self.lms.handle_user_completions(
            request.match_info["id"], request.headers, request.query
        )
        return await self._serve(request, answer)

    async def list_account_completions(self, request: web.Request) -> web.Response:
        answer = self.lms.handle_account_completions(request.headers, request.query)
        return await self._serve(request, answer)

    async def list_users(self, request: web.Request) -> web.Response:
        return await self._serve(request, self.lms.handle_users(request.headers, request.query))

    async def _serve(self, request: web.Request, answer: SimResponse) -> web.Response:
        account = request.headers.get("x-account-id")
        with self.lms.answering(None if account is None else unquote(account)):
            await self.lms.while_answering(request.path)
            return await _serve(answer)

    async def list_linked_accounts(self, request: web.Request) -> web.Response:
        return await self._serve(request, self.lms.handle_accounts(request.headers, request.query))

    async def add_account(self, request: web.Request) -> web.Response:
        """Create the account and link it (again); a body sets what `GET /accounts` says of
        it (status, status_reasons, provider, origin_owner_id...; `not_lms: true`: its LMS
        routes answer 404)."""
        linked = self.lms.link_account(request.match_info["account_id"], **await _body(request))
        public = {k: v for k, v in linked.items() if k not in ("credentials", "setup_information")}
        return web.json_response(public, status=201)

    async def unlink_account(self, request: web.Request) -> web.Response:
        self.lms.unlink_account(request.match_info["account_id"])
        return web.json_response({"ok": True})

    async def add_user(self, request: web.Request) -> web.Response:
        """Create a user, or update it when the body has fields (an existing user without
        them is left as it is)."""
        a, u = request.match_info["account_id"], request.match_info["user_id"]
        fields = await _body(request)
        if fields:
            return web.json_response(self.lms.set_user(a, u, **fields), status=201)
        self.lms.add_user(a, u)
        return web.json_response(self.lms.get_user(a, u), status=201)

    async def patch_user(self, request: web.Request) -> web.Response:
        a, u = request.match_info["account_id"], request.match_info["user_id"]
        self.lms.get_user(a, u)  # only an existing user is patched (404 otherwise)
        return web.json_response(self.lms.set_user(a, u, **await _body(request)))

    async def remove_user(self, request: web.Request) -> web.Response:
        a, u = request.match_info["account_id"], request.match_info["user_id"]
        return web.json_response(self.lms.remove_user(a, u))

    async def put_assignment(self, request: web.Request) -> web.Response:
        a, u, aid = (request.match_info[k] for k in ("account_id", "user_id", "aid"))
        record = await _body(request)
        return web.json_response(self.lms.put_assignment(a, u, {**record, "id": aid}))

    async def patch_assignment(self, request: web.Request) -> web.Response:
        a, u, aid = (request.match_info[k] for k in ("account_id", "user_id", "aid"))
        fields = await _body(request)
        return web.json_response(self.lms.update_assignment(a, u, aid, **fields))

    async def delete_assignment(self, request: web.Request) -> web.Response:
        a, u, aid = (request.match_info[k] for k in ("account_id", "user_id", "aid"))
        return web.json_response(self.lms.delete_assignment(a, u, aid))

    async def put_completion(self, request: web.Request) -> web.Response:
        a, u, cid = (request.match_info[k] for k in ("account_id", "user_id", "cid"))
        record = await _body(request)
        return web.json_response(self.lms.put_completion(a, u, {**record, "id": cid}))

    async def patch_completion(self, request: web.Request) -> web.Response:
        a, u, cid = (request.match_info[k] for k in ("account_id", "user_id", "cid"))
        return web.json_response(self.lms.update_completion(a, u, cid, **await _body(request)))

    async def delete_completion(self, request: web.Request) -> web.Response:
        a, u, cid = (request.match_info[k] for k in ("account_id", "user_id", "cid"))
        return web.json_response(self.lms.delete_completion(a, u, cid))

    async def get_faults(self, request: web.Request) -> web.Response:
        return web.json_response(self.lms.faults.to_json())

    async def set_faults(self, request: web.Request) -> web.Response:
        self.lms.faults.apply_json(await _body(request), self.lms.clock())
        return web.json_response(self.lms.faults.to_json())

    async def reset_faults(self, request: web.Request) -> web.Response:
        self.lms.faults = Faults()
        return web.json_response(self.lms.faults.to_json())

    async def set_rate_limit(self, request: web.Request) -> web.Response:
        value = (await _body(request)).get("per_minute")
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError("per_minute must be a number or null")
        self.lms.set_rate_limit(value)
        return web.json_response({"per_minute": self.lms.rate_limit_per_minute})

    async def get_requests(self, request: web.Request) -> web.Response:
        return web.json_response([r.to_json() for r in self.lms.requests])

    async def clear_requests(self, request: web.Request) -> web.Response:
        self.lms.clear_requests()
        return web.json_response({"ok": True})

    async def state(self, request: web.Request) -> web.Response:
        return web.json_response(self.lms.snapshot())


async def _serve(answer: SimResponse) -> web.Response:
    if answer.delay > 0:
        await asyncio.sleep(answer.delay)
    return web.Response(
        status=answer.status,
        body=answer.body,
        headers=answer.headers,
        content_type="application/json",
    )


def create_app(lms: SimLMS) -> web.Application:
    """The simulator's aiohttp application. Control requests are not in `lms.requests`."""
    r = _Routes(lms)
    app = web.Application(middlewares=[_control_errors])
    user = "/_sim/accounts/{account_id}/users/{user_id}"
    one = user + "/assignments/{aid}"
    completion = user + "/completions/{cid}"
    app.add_routes(
        [
            web.get(LIST_PATH, r.list_assignments),
            web.get(ACCOUNT_ASSIGNMENTS_PATH, r.list_account_assignments),
            web.get(USER_COMPLETIONS_PATH, r.list_user_completions),
            web.get(ACCOUNT_COMPLETIONS_PATH, r.list_account_completions),
            web.put(completion, r.put_completion),
            web.patch(completion, r.patch_completion),
            web.delete(completion, r.delete_completion),
            web.get(USERS_PATH, r.list_users),
            web.get(ACCOUNTS_PATH, r.list_linked_accounts),
            web.post("/_sim/accounts/{account_id}", r.add_account),
            web.delete("/_sim/accounts/{account_id}", r.unlink_account),
            web.post(user, r.add_user),
            web.patch(user, r.patch_user),
            web.delete(user, r.remove_user),
            web.put(one, r.put_assignment),
            web.patch(one, r.patch_assignment),
            web.delete(one, r.delete_assignment),
            web.get("/_sim/faults", r.get_faults),
            web.post("/_sim/faults", r.set_faults),
            web.delete("/_sim/faults", r.reset_faults),
            web.post("/_sim/rate-limit", r.set_rate_limit),
            web.get("/_sim/requests", r.get_requests),
            web.delete("/_sim/requests", r.clear_requests),
            web.get("/_sim/state", r.state),
        ]
    )
    return app


async def start_sim_server(
    lms: SimLMS, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `lms` (port 0: a free one); returns the runner and base URL. Stop with
    `await runner.cleanup()`."""
    # handler_cancellation: a client giving up on a held (delayed) request ends its handler,
    # so cleanup does not wait out long fault delays
    runner = web.AppRunner(
        create_app(lms), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    real_port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{real_port}"


async def churn_forever(lms: SimLMS, per_second: float) -> None:
    """Advance a random assignment `per_second` times a second until cancelled."""
    while True:
        await asyncio.sleep(1.0 / per_second)
        lms.churn_once()


async def run_standalone(
    host: str,
    port: int,
    accounts: int,
    users: int,
    assignments: int,
    rate_limit: float | None,
    churn_per_second: float,
    api_key: str = "sim_key",
) -> None:
    """`lms-webhooks simulate-lms`: seed, serve, print how to call it, churn; until cancelled."""
    lms = SimLMS(api_key=api_key, rate_limit_per_minute=rate_limit, seed=random.randrange(2**32))
    lms.seed(accounts, users, assignments)
    runner, base = await start_sim_server(lms, host, port)
    print(f"simulated StackOne LMS at {base}")
    print(f"api key: {api_key}   accounts: acc_1..acc_{accounts}   users: u_1..u_{users}")
    print(f"rate limit: {rate_limit or 'none'} req/min   churn: {churn_per_second}/s")
    curl = f'curl -u {api_key}: -H "x-account-id: acc_1"'
    print("examples:")
    print(
        f"  one user's assignments: {curl} '{base}/unified/lms/users/u_1/assignments?page_size=5'"
    )
    print(f"  the account's:          {curl} '{base}/unified/lms/assignments?page_size=100'")
    print(
        f"  its changes:            {curl} -G '{base}/unified/lms/assignments' "
        "--data-urlencode 'filter[updated_after]=2026-01-01T00:00:00.000Z'"
    )
    print(f"  its users:              {curl} '{base}/unified/lms/users?page_size=100'")
    print(f"control API: {base}/_sim/state, {base}/_sim/faults, {base}/_sim/requests,")
    print(f"  users join, change, leave: POST|PATCH|DELETE {base}/_sim/accounts/acc_1/users/<id>")
    print("  (see service/sim/lms.py create_app for every route)", flush=True)
    churn = None
    if churn_per_second > 0:
        churn = asyncio.create_task(churn_forever(lms, churn_per_second))
    try:
        await asyncio.Event().wait()
    finally:
        if churn is not None:
            churn.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await churn
        await runner.cleanup()
