"""What an operator can do and see, in one place: the admin API, the console and the CLI
call these. What they see comes as the models of the admin API (service/contract/admin.py),
built where the data is gathered: the API answers them as they are, the console shows them.

Built by the lifecycle (`app.Service`) or by a command from the stores; it knows nothing of
the running workers beyond the hooks the lifecycle sets: `wake` (events to deliver now),
`users_changed` (the schedules and the budget plan follow at once), `checks` (whether
each worker runs, for /readyz) and `session` (the deliveries' HTTP client, for test sends).

Listings take a `limit` (1..MAX_LIMIT) and an opaque `cursor` from the page before, and
answer `next_cursor` (None: the end). Bad input raises InvalidInput (the API's 400), an
unknown endpoint NotFound (404).

Here: endpoints and their dead letters, users, accounts, the budget plan and the upstream's
pressure; the delivery log's views in `delivery_log.py`; the state they share, readiness and
metrics in `base.py`.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict

import structlog

from service.contract import admin as m
from service.cursor import decode_cursor, encode_cursor
from service.delivery.breaker import enabled
from service.errors import InvalidInput, NotFound
from service.operations.base import MAX_LIMIT, SHARED_FOR, Shared, page_limit
from service.operations.delivery_log import EVENT_FILTERS, DeliveryLogViews
from service.reading.planner import BudgetPlanner
from service.store import keys
from service.user_ids import user_id_problem

__all__ = ["DEAD_LETTERS_LIMIT", "EVENT_FILTERS", "MAX_LIMIT", "SHARED_FOR", "Operations", "Shared"]

log = structlog.get_logger("service")

DEAD_LETTERS_LIMIT = 1000  # the most dead letters one answer lists (they are not paged)


class Operations(DeliveryLogViews):
    async def dead_letters(self, endpoint_id: str, limit: int = 100) -> m.DeadLetters:
        """The endpoint's dead letters, oldest first (up to DEAD_LETTERS_LIMIT), each with
        its event as sent and what its last attempt got."""
        self._endpoint(endpoint_id)
        page_limit(limit, DEAD_LETTERS_LIMIT)
        letters = await self.stores.queue.dead_letters(endpoint_id, limit)
        return m.DeadLetters(endpoint=endpoint_id, dead_letters=letters)

    async def replay(self, endpoint_id: str, event_ids: list[str] | None) -> int:
        """Queue dead letters again with their ids (all of the endpoint's when none given)."""
        now_ms = int(self.clock() * 1000)
        queued = await self.stores.queue.replay(endpoint_id, now_ms, event_ids)
        log.info("dead_letters_replayed", endpoint=endpoint_id, queued=queued)
        self.wake({endpoint_id})
        return queued

    async def enable_endpoint(self, endpoint_id: str) -> m.EndpointHealth:
        health = await self.stores.endpoints.update(endpoint_id, enabled)
        log.info("endpoint_enabled", endpoint=endpoint_id)
        self.wake({endpoint_id})
        return m.EndpointHealth.of(endpoint_id, health)

    async def add_user(self, account_id: str, user_id: str) -> bool:
        """Track a user of a configured account from now on; False when it already is.
        InvalidInput for an id that cannot be one (service/user_ids.py), NotFound for an
        account the config does not name (it was polled with that account id header)."""
        problem = user_id_problem(user_id)
        if problem is not None:
            raise InvalidInput(f"`user_id`: {problem}")
        if await self.stores.accounts.account(account_id) is None:
            raise NotFound("unknown account: `account_id` is not an account being read")
        added = await self.stores.users.add(account_id, user_id, due_ms=int(self.clock() * 1000))
        log.info("user_added", account_id=account_id, user_id=user_id, added=added)
        if added:
            self.users_changed()
        return added

    async def remove_user(self, account_id: str, user_id: str) -> bool:
        removed = await self.stores.users.remove(account_id, user_id)
        log.info("user_removed", account_id=account_id, user_id=user_id, removed=removed)
        if removed:
            self.users_changed()
        return removed

    async def poll_now(self, account_id: str, user_id: str) -> bool:
        """Read the user's assignments now: its own poll, or its account's feed when the feed
        covers it. False when the user is not tracked."""
        users = self.stores.users
        if await users.polled_by_feed(account_id, user_id):
            return await self.stores.feed_leases.due_now(keys.account_member(account_id))
        return await self.stores.leases.due_now(keys.user_member(account_id, user_id))

    async def endpoints(self, limit: int = 100, cursor: str | None = None) -> m.EndpointPage:
        """Each configured endpoint (in the config's order) with its state, queue depth and
        dead letters."""
        page_limit(limit)
        configured = self.settings.endpoints
        start = 0
        if cursor is not None:
            (after,) = decode_cursor(cursor, "endpoints", (str,))
            ids = [e.id for e in configured]
            if after not in ids:
                raise InvalidInput("`cursor` names an endpoint no longer configured")
            start = ids.index(after) + 1
        page = configured[start : start + limit]
        out = [await self.endpoint(endpoint.id) for endpoint in page]
        more = start + limit < len(configured)
        next_cursor = encode_cursor("endpoints", page[-1].id) if more and page else None
        return m.EndpointPage(endpoints=out, next_cursor=next_cursor)

    async def endpoint(self, endpoint_id: str) -> m.Endpoint:
        """One configured endpoint with its state (as every process sees it), queue depth
        and dead letters; NotFound for an endpoint the config does not name."""
        endpoint, stores = self._endpoint(endpoint_id), self.stores
        health, depth, dead = await asyncio.gather(
            stores.endpoints.health(endpoint_id),
            stores.queue.depth(endpoint_id),
            stores.queue.dead_count(endpoint_id),
        )
        return m.Endpoint.of(
            endpoint_id, health, url=endpoint.url, queue_depth=depth, dead_letters=dead
        )

    async def users(self, limit: int = 100, cursor: str | None = None) -> m.UserPage:
        """Tracked users (by account, then user id) with their poll state, and the accounts
        backed off (their key or account refused: 401/403/412), with when they are retried."""
        page_limit(limit)
        after = None if cursor is None else decode_cursor(cursor, "users", (str,))[0]
        users, last = await self.stores.users.describe(after, limit)
        backed_off = await self.stores.polls.backed_off_accounts()
        return m.UserPage(
            users=users,
            backed_off_accounts={a: m.AccountBackoff(**asdict(b)) for a, b in backed_off.items()},
            next_cursor=None if last is None else encode_cursor("users", last),
        )

    async def accounts(self) -> list[m.Account]:
        """Every account (service/accounts_view.py: the accounts read, and the linked
        accounts not read), by id, each with its state, strategy in force (and why, for
        `auto`), feed and listing state, users tracked, back-off and provider's pause."""
        return (await self.account_view.page())[0]

    async def accounts_page(
        self, state: str | None = None, limit: int = 100, cursor: str | None = None
    ) -> m.AccountList:
        """A page of the accounts (only those in `state`, when given)."""
        page_limit(limit)
        items, next_cursor = await self.account_view.page(state, limit, cursor)
        return m.AccountList(accounts=items, next_cursor=next_cursor)

    async def budget(self) -> m.Budget:
        """The budget plan the pollers follow (as last published; the config's before)."""
        published = await self.stores.read_costs.published()
        if published is not None:
            return m.Budget.model_validate_json(published)
        return BudgetPlanner(
            self.stores.read_costs, self.stores.users, self.settings, self.metrics
        ).describe()

    async def upstream(self) -> m.Upstream:
        """What the upstream API has told us to slow down: 429 answers this process has
        had (its own counter, as in /metrics), and the key's shared Retry-After pause."""
        responses_429 = self.metrics.registry.get_sample_value(
            "lms_webhooks_upstream_requests_total", {"status": "429"}
        )
        paused = await self.stores.limiter.pause_left(keys.UPSTREAM_PAUSE)
        return m.Upstream(responses_429=int(responses_429 or 0), paused_for_seconds=paused)
