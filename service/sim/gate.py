"""Every simulated list request's way in: auth, the key's rate limit, the account header,
forced faults, pauses and the request log, in the order StackOne applies them.

Pure state, no I/O: `Gate._handle` turns one request into a `SimResponse` and leaves the page
itself to the subclass (`service.sim.lms_state.SimLMS._page`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import unquote

from service.sim.completions import LMSCompletions
from service.sim.faults import _FAULT_KINDS, Faults, FaultSpec, RequestRecord, TokenBucket
from service.sim.linked import LinkedAccounts
from service.sim.listing import Matcher, Record
from service.sim.records import NotFoundError

__all__ = ["MESSAGES", "Endpoint", "Gate", "SimResponse", "basic_auth_header"]

# Messages of the documented error bodies (components/schemas/*Response).
MESSAGES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden resource",
    404: "Not Found",
    408: "Request timed out",
    409: "Conflict",
    412: "Precondition failed",
    422: "Unprocessable Entity",
    429: "Too many requests",
    500: "Internal server error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def basic_auth_header(api_key: str) -> str:
    """The `Authorization` value StackOne expects: the key as user name, empty password."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


@dataclass(frozen=True)
class Endpoint:
    """One list operation: its path and the filters it takes besides updated_after."""

    operation: str  # StackOne's operation id; also tags its cursors
    path: str  # may name the user: {id}
    matchers: Mapping[str, Matcher]  # filters checked record by record
    narrowing: tuple[str, ...] = ()  # filters the record source applies itself
    account_wide: bool = False  # the account endpoint switches of Faults apply

    @property
    def filters(self) -> tuple[str, ...]:
        return (*self.matchers, *self.narrowing)


@dataclass
class SimResponse:
    """What to answer one upstream request with; `delay` is how long to hold it first."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0

    def json(self) -> Any:
        """The parsed body (raises on the malformed-JSON fault)."""
        return json.loads(self.body)


def _auth_ok(header: str | None, api_key: str) -> bool:
    if not header or not header.lower().startswith("basic "):
        return False
    try:
        user = base64.b64decode(header[6:].strip(), validate=True).decode().split(":", 1)[0]
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user.encode(), api_key.encode())


def _page_body(data: list[Record], cursor: str | None, spec: FaultSpec | None) -> bytes:
    if spec and spec.get("malformed_json"):
        return b'{"data": ['
    if spec and spec.get("wrong_shape"):
        return json.dumps({"data": "not-a-list", "next": None}).encode()
    if spec and spec.get("missing_id") and data:
        data = [{k: v for k, v in data[0].items() if k != "id"}, *data[1:]]
    return json.dumps({"next": cursor, "data": data}).encode()


def _accounts_body(data: list[Record], spec: FaultSpec | None) -> bytes:
    """A page of `GET /accounts`: a JSON array (the faults as for _page_body)."""
    if spec and spec.get("malformed_json"):
        return b"["
    if spec and spec.get("wrong_shape"):
        return json.dumps({"data": data}).encode()
    if spec and spec.get("missing_id") and data:
        data = [{k: v for k, v in data[0].items() if k != "id"}, *data[1:]]
    return json.dumps(data).encode()


def _delayed(response: SimResponse, delay: float) -> SimResponse:
    response.delay = delay
    return response


class Gate(LMSCompletions):
    """The API key, its rate limit, the faults and the request log of a simulated LMS."""

    def __init__(
        self,
        api_key: str = "sim_key",
        rate_limit_per_minute: float | None = None,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        super().__init__(clock)
        self.api_key = api_key
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        # per account: its requests being answered now, and the most there ever were at once
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        # seeded so error_rate and churn are reproducible from run to run
        self.rng = random.Random(seed)
        self.linked = LinkedAccounts()  # the project's linked accounts (`GET /accounts`)
        self._bucket: TokenBucket | None = None
        self.set_rate_limit(rate_limit_per_minute)

    # -- configuration -------------------------------------------------------------------

    @property
    def rate_limit_per_minute(self) -> float | None:
        """The key's budget, None when unlimited."""
        return self._bucket.per_minute if self._bucket else None

    def set_rate_limit(self, per_minute: float | None) -> None:
        """Replace the rate limit (a fresh, full bucket); None switches it off."""
        if per_minute is not None and per_minute <= 0:
            raise ValueError("rate limit must be positive")
        self._bucket = TokenBucket(per_minute, self.clock) if per_minute else None

    def auth_headers(self, account_id: str | None = None) -> dict[str, str]:
        """Headers a well-behaved client sends (handy in tests and examples)."""
        headers = {"Authorization": basic_auth_header(self.api_key)}
        if account_id is not None:
            headers["x-account-id"] = account_id
        return headers

    @contextmanager
    def answering(self, account_id: str | None) -> Iterator[None]:
        """One request of `account_id` is being answered (held by its delay, sent)."""
        account = account_id or ""
        self.in_flight[account] += 1
        self.max_in_flight[account] = max(self.max_in_flight[account], self.in_flight[account])
        try:
            yield
        finally:
            self.in_flight[account] -= 1

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.requests.clear()

    def link_account(self, account_id: str, **fields: Any) -> Record:
        """Create the account if needed and link it (again), with these public fields
        (`status`, `provider`, `origin_owner_id`...; `not_lms`: its LMS routes answer 404)."""
        self.add_account(account_id)
        return self.linked.link(account_id, fields, self.clock())

    def unlink_account(self, account_id: str) -> None:
        """Gone from `GET /accounts` (its LMS routes still answer: a service that reads it
        anyway shows in the request log)."""
        if account_id not in self.accounts:
            raise NotFoundError(f"no account {account_id!r}")
        self.linked.unlink(account_id)

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready (for GET /_sim/state)."""
        return {
            **super().snapshot(),
            "unlinked": sorted(self.linked.unlinked),
            "not_lms": sorted(self.linked.not_lms),
            "faults": self.faults.to_json(),
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "request_count": len(self.requests),
        }

    # -- the way in ----------------------------------------------------------------------

    def _handle(
        self,
        endpoint: Endpoint,
        headers: Mapping[str, str],
        query: Mapping[str, str],
        user_id: str | None,
    ) -> SimResponse:
        """Answer one list request and log it."""
        now = self.clock()
        lower = {k.lower(): v for k, v in headers.items()}
        record = RequestRecord(
            time=now,
            method="GET",
            path=endpoint.path.format(id=user_id),
            query={k: v for k, v in query.items()},
            # the service URL-encodes the account id (CONTRACT §3), as it does the user id
            account_id=unquote(lower["x-account-id"]) if "x-account-id" in lower else None,
            user_id=user_id,
            auth_ok=_auth_ok(lower.get("authorization"), self.api_key),
            status=0,
        )
        response = self._answer(endpoint, record)
        until = self.faults.pause_all_until
        if until is not None and now < until:
            # a paused API holds every request, whatever its answer turns out to be
            response.delay += until - now
            record.fault = record.fault or "paused"
        record.status = response.status
        record.delay = response.delay
        self.requests.append(record)
        return response

    def handle_accounts(self, headers: Mapping[str, str], query: Mapping[str, str]) -> SimResponse:
        """Answer `GET /accounts` (no `x-account-id`) and log the request; `query` may repeat
        a parameter (a MultiDict)."""
        now = self.clock()
        lower = {k.lower(): v for k, v in headers.items()}
        record = RequestRecord(
            time=now,
            method="GET",
            path="/accounts",
            query={k: v for k, v in query.items()},
            account_id=None,
            user_id=None,
            auth_ok=_auth_ok(lower.get("authorization"), self.api_key),
            status=0,
        )
        response = self._listing(record, query)
        record.status, record.delay = response.status, response.delay
        self.requests.append(record)
        return response

    def _listing(self, rec: RequestRecord, query: Mapping[str, str]) -> SimResponse:
        if not rec.auth_ok:
            return self.error(401)
        if self._bucket is not None and (wait := self._bucket.take()) > 0:
            rec.fault = "rate_limited"
            return self.error(429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        spec = self.faults.take_forced(None, accounts=True)
        delay = self.faults.delay_seconds + float(spec.get("delay", 0.0) if spec else 0.0)
        if spec is not None:
            rec.fault = next((k for k in spec if k in _FAULT_KINDS), "forced")
            if "status" in spec:
                return _delayed(self._forced_error(spec, rec), delay)
        try:
            data = self.linked.page(self.accounts, query, self.faults.accounts_limit)
        except ValueError as exc:
            return _delayed(self.error(400, str(exc)), delay)
        if self.faults.accounts_limit is not None:
            rec.fault = rec.fault or "accounts_limit"
        date = {"Date": formatdate(rec.time, usegmt=True)}
        return SimResponse(200, _accounts_body(data, spec), date, delay)

    def error(
        self,
        status: int,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        *,
        provider_errors: list[dict[str, Any]] | None = None,
    ) -> SimResponse:
        """An error in the documented `{statusCode, message, timestamp}` shape, with the
        provider's own answers (`provider_errors`) when StackOne passes them on."""
        body: dict[str, Any] = {
            "statusCode": status,
            "message": message or MESSAGES.get(status, "Error"),
            "timestamp": self.now_iso(),
        }
        if provider_errors is not None:
            body["provider_errors"] = provider_errors
        return SimResponse(status, json.dumps(body).encode(), dict(headers or {}))

    def _answer(self, endpoint: Endpoint, rec: RequestRecord) -> SimResponse:
        """The gate every list request passes, in StackOne's order, then its page."""
        if not rec.auth_ok:
            return self.error(401)
        if self._bucket is not None:
            wait = self._bucket.take()
            if wait > 0:
                rec.fault = "rate_limited"
                return self.error(429, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if not rec.account_id:
            return self.error(400, "x-account-id header is required")
        faults = self.faults
        spec = faults.take_forced(rec.account_id, rec.path)
        delay = faults.delay_seconds + faults.account_delays.get(rec.account_id, 0.0)
        delay += float(spec.get("delay", 0.0) if spec else 0.0)
        if spec is not None:
            rec.fault = next((k for k in spec if k in _FAULT_KINDS), "forced")
            if "status" in spec:
                return _delayed(self._forced_error(spec, rec), delay)
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            rec.fault = "error_rate"
            return _delayed(self.error(500), delay)
        if rec.account_id not in self.accounts:
            return _delayed(self.error(403, "Account not found"), delay)
        if rec.account_id in self.linked.not_lms:  # another category's account (an HRIS)
            return _delayed(self.error(404), delay)
        if endpoint.account_wide and faults.account_endpoint_status is not None:
            # a provider without the account-wide operation: StackOne answers for it
            rec.fault = "account_endpoint_status"
            return _delayed(self.error(faults.account_endpoint_status), delay)
        try:
            data, cursor, index = self._page(endpoint, rec.account_id, rec.user_id, rec.query)
        except NotFoundError:
            return _delayed(self.error(404, f"User {rec.user_id} not found"), delay)
        except ValueError as exc:
            return _delayed(self.error(400, str(exc)), delay)
        delay += faults.page_delays.get(index, 0.0)
        # dated by StackOne's clock, as its answers are (aiohttp would date it by the host's)
        date = {"Date": formatdate(rec.time, usegmt=True)}
        return SimResponse(200, _page_body(data, cursor, spec), date, delay)

    def _forced_error(self, spec: FaultSpec, rec: RequestRecord) -> SimResponse:
        """A forced status; with `provider_errors`, as StackOne passes on the account's
        provider's answer (its status, URL, body and headers)."""
        status = spec["status"]
        extra = {"Retry-After": str(spec["retry_after"])} if "retry_after" in spec else {}
        if not spec.get("provider_errors"):
            return self.error(status, headers=extra)
        rec.fault = "provider_errors"
        provider = {
            "status": status,
            "url": f"https://provider.example/{rec.account_id}{rec.path}",
            "raw": {"error": "rate limit exceeded"},
            "headers": {k.lower(): v for k, v in extra.items()},
        }
        return self.error(status, headers=extra, provider_errors=[provider])

    def _page(
        self, endpoint: Endpoint, account_id: str, user_id: str | None, query: Mapping[str, str]
    ) -> tuple[list[Record], str | None, int]:
        """One page of an existing account: (records, next cursor or None, 0-based page
        index). Raises NotFoundError for an unknown user, ValueError for a bad query."""
        raise NotImplementedError
