"""The simulated StackOne LMS's list endpoints, in pure state: `SimLMS`.

Three endpoints share one request path (auth, rate limit, faults, the request log:
`service.sim.gate`) and one way of paging (`service.sim.listing`): List User Assignments
(`GET /unified/lms/users/{id}/assignments`), the account-wide List Assignments
(`GET /unified/lms/assignments`) and List Users (`GET /unified/lms/users`). Nothing here does
I/O; `SimLMS.handle_list` and its siblings turn one request into a `SimResponse` (status, body,
headers and how long to hold the answer) which `service.sim.lms` serves over HTTP.

The records and users live in `service.sim.records`, seeding in `service.sim.seeding`; fault
settings, forced-fault specs, the rate limiter's token bucket and the request log record in
`service.sim.faults`. Most are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

# Re-exported (explicitly, for mypy's no-implicit-reexport): these used to live here.
from service.sim.faults import _FAULT_KINDS as _FAULT_KINDS
from service.sim.faults import Faults, FaultSpec, RequestRecord, parse_fault_spec
from service.sim.faults import TokenBucket as TokenBucket
from service.sim.faults import _seconds as _seconds
from service.sim.gate import MESSAGES as MESSAGES
from service.sim.gate import Endpoint, Gate, SimResponse, basic_auth_header
from service.sim.listing import DEFAULT_PAGE_SIZE as DEFAULT_PAGE_SIZE
from service.sim.listing import MAX_PAGE_SIZE as MAX_PAGE_SIZE
from service.sim.listing import (
    Matcher,
    PageRequest,
    Record,
    Source,
    iso_ms,
    parse_iso_ms,
    take_page,
)
from service.sim.records import NotFoundError
from service.sim.seeding import churn_once, seed

LIST_PATH = "/unified/lms/users/{id}/assignments"
ACCOUNT_ASSIGNMENTS_PATH = "/unified/lms/assignments"
USERS_PATH = "/unified/lms/users"
USER_COMPLETIONS_PATH = "/unified/lms/users/{id}/completions"
ACCOUNT_COMPLETIONS_PATH = "/unified/lms/completions"
ACCOUNTS_PATH = "/accounts"

__all__ = [
    "ACCOUNTS_PATH",
    "ACCOUNT_ASSIGNMENTS",
    "ACCOUNT_ASSIGNMENTS_PATH",
    "ACCOUNT_COMPLETIONS",
    "ACCOUNT_COMPLETIONS_PATH",
    "LIST_PATH",
    "USERS",
    "USERS_PATH",
    "USER_ASSIGNMENTS",
    "USER_COMPLETIONS",
    "USER_COMPLETIONS_PATH",
    "Endpoint",
    "FaultSpec",
    "Faults",
    "NotFoundError",
    "Record",
    "RequestRecord",
    "SimLMS",
    "SimResponse",
    "basic_auth_header",
    "iso_ms",
    "parse_fault_spec",
    "parse_iso_ms",
]


def _status_is(record: Record, value: str) -> bool:
    return bool((record.get("status") or {}).get("value") == value)


def _field_is(name: str) -> Matcher:
    return lambda record, value: bool(record.get(name) == value)


def _email_is(record: Record, value: str) -> bool:
    # the domain part is case-insensitive, and in practice so is the whole address
    return str(record.get("email") or "").lower() == value.lower()


USER_ASSIGNMENTS = Endpoint("lms_list_user_assignments", LIST_PATH, {"filter[status]": _status_is})
ACCOUNT_ASSIGNMENTS = Endpoint(
    "lms_list_assignments",
    ACCOUNT_ASSIGNMENTS_PATH,
    {"filter[status]": _status_is, "remote_user_id": _field_is("remote_user_id")},
    narrowing=("user_id",),
    account_wide=True,
)
# completions take no filter but filter[updated_after] (stackone/linked-accounts.md)
USER_COMPLETIONS = Endpoint("lms_list_user_completions", USER_COMPLETIONS_PATH, {})
ACCOUNT_COMPLETIONS = Endpoint(
    "lms_list_completions", ACCOUNT_COMPLETIONS_PATH, {}, account_wide=True
)
USERS = Endpoint(
    "lms_list_users",
    USERS_PATH,
    {"filter[email]": _email_is, "filter[external_reference]": _field_is("external_reference")},
)


class SimLMS(Gate):
    """Accounts → users → assignments, served like StackOne's LMS list endpoints."""

    def seed(self, accounts: int, users: int, assignments: int) -> None:
        """See `service.sim.seeding.seed`."""
        seed(self, accounts, users, assignments)

    def churn_once(self) -> tuple[str, str, Record] | None:
        """See `service.sim.seeding.churn_once` (drawn from `rng`)."""
        return churn_once(self, self.rng)

    # -- the upstream endpoints ----------------------------------------------------------

    async def while_answering(self, path: str) -> None:
        """Awaited once an upstream request's answer is made, before it is sent: a test's
        subclass acts here on what happens while a read is in flight (nothing by default)."""

    def handle_list(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        """Answer `GET /unified/lms/users/{user_id}/assignments` and log the request."""
        return self._handle(USER_ASSIGNMENTS, headers, query, user_id)

    def handle_account_assignments(
        self, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        """Answer `GET /unified/lms/assignments` and log the request."""
        return self._handle(ACCOUNT_ASSIGNMENTS, headers, query, query.get("user_id") or None)

    def handle_user_completions(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        """Answer `GET /unified/lms/users/{user_id}/completions` and log the request."""
        return self._handle(USER_COMPLETIONS, headers, query, user_id)

    def handle_account_completions(
        self, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        """Answer `GET /unified/lms/completions` and log the request."""
        return self._handle(ACCOUNT_COMPLETIONS, headers, query, None)

    def handle_users(self, headers: Mapping[str, str], query: Mapping[str, str]) -> SimResponse:
        """Answer `GET /unified/lms/users` and log the request."""
        return self._handle(USERS, headers, query, None)

    def _page(
        self, endpoint: Endpoint, account_id: str, user_id: str | None, query: Mapping[str, str]
    ) -> tuple[list[Record], str | None, int]:
        """One page: (records, next cursor or None, 0-based page index)."""
        request = PageRequest.parse(endpoint.operation, query, endpoint.filters)
        source: Source
        if endpoint is USER_ASSIGNMENTS:
            source = partial(self.user_records, account_id, str(user_id))
        elif endpoint is USER_COMPLETIONS:
            source = partial(self.user_completions, account_id, str(user_id))
        else:
            if request.position < 0:
                self.catch_up(account_id)  # once a walk, for records written straight in
            if endpoint is USERS:
                source = partial(self.account_users, account_id)
            elif endpoint is ACCOUNT_COMPLETIONS:
                source = partial(self.account_completions, account_id)
                if self.faults.account_filter_ignored:
                    request.after_ms = None
            else:
                narrow = request.filters.get("user_id")
                source = partial(self.account_records, account_id, user_id=narrow)
                if self.faults.account_filter_ignored:
                    request.after_ms = None  # a provider that does not support the filter
        data, cursor = take_page(source, request.keeps(endpoint.matchers), request, self.faults)
        return data, cursor, request.index
