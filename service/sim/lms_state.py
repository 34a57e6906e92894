"""Pure in-memory state of the simulated StackOne LMS: records, paging, auth, rate limit, faults.

Nothing here does I/O; `SimLMS.handle_list` turns one request into a `SimResponse` (status,
body, headers and how long to hold the answer) which `service.sim.lms` serves over HTTP.
Fault settings, forced-fault specs, the rate limiter's token bucket and the request log record
live in `service.sim.faults` and are re-exported here.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hmac
import json
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

# Re-exported (explicitly, for mypy's no-implicit-reexport): these used to live here.
from service.sim.faults import _FAULT_KINDS as _FAULT_KINDS
from service.sim.faults import Faults, FaultSpec, RequestRecord, parse_fault_spec
from service.sim.faults import TokenBucket as TokenBucket
from service.sim.faults import _seconds as _seconds

Record = dict[str, Any]

LIST_PATH = "/unified/lms/users/{id}/assignments"
DEFAULT_PAGE_SIZE = 25
MAX_PAGE_SIZE = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

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

_STATUS_SOURCE = {"pending": "Not Started", "in_progress": "In Progress", "completed": "Completed"}

__all__ = [
    "LIST_PATH",
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


class NotFoundError(LookupError):
    """An account, user or assignment the simulator does not hold."""


def iso_ms(ts: float) -> str:
    """Unix seconds as ISO 8601 UTC with milliseconds and `Z`."""
    ms = round(ts * 1000)
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_iso_ms(value: str) -> int:
    """Epoch milliseconds of an ISO 8601 string (naive means UTC); ValueError when invalid."""
    dt = datetime.fromisoformat(value)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    # timedelta floor division is exact, unlike float timestamps
    return (dt - _EPOCH) // timedelta(milliseconds=1)


def basic_auth_header(api_key: str) -> str:
    """The `Authorization` value StackOne expects: the key as user name, empty password."""
    return "Basic " + base64.b64encode(f"{api_key}:".encode()).decode()


def _encode_cursor(state: dict[str, Any]) -> str:
    raw = json.dumps(state, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> dict[str, Any]:
    try:
        state = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("next is not a valid cursor") from exc
    if not isinstance(state, dict) or not isinstance(state.get("o"), int) or state["o"] < 0:
        raise ValueError("next is not a valid cursor")
    return state


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


class SimLMS:
    """Accounts → users → assignments, served like StackOne's List User Assignments."""

    def __init__(
        self,
        api_key: str = "sim_key",
        rate_limit_per_minute: float | None = None,
        clock: Callable[[], float] = time.time,
        seed: int = 0,
    ) -> None:
        self.api_key = api_key
        self.clock = clock
        self.accounts: dict[str, dict[str, dict[str, Record]]] = {}
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        # seeded so error_rate and churn are reproducible from run to run
        self.rng = random.Random(seed)
        self._bucket: TokenBucket | None = None
        self.set_rate_limit(rate_limit_per_minute)
        self._next_id = 1

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

    def clear_requests(self) -> None:
        """Forget the request log."""
        self.requests.clear()

    # -- records -------------------------------------------------------------------------

    def now_iso(self) -> str:
        """The simulator clock as an ISO timestamp."""
        return iso_ms(self.clock())

    def add_account(self, account_id: str) -> None:
        """Create an account (no-op when it exists)."""
        self.accounts.setdefault(account_id, {})

    def add_user(self, account_id: str, user_id: str) -> None:
        """Create a user, and its account if needed (no-op when it exists)."""
        self.accounts.setdefault(account_id, {}).setdefault(user_id, {})

    def _records(self, account_id: str, user_id: str) -> dict[str, Record]:
        try:
            return self.accounts[account_id][user_id]
        except KeyError:
            raise NotFoundError(f"no user {user_id!r} in account {account_id!r}") from None

    def _get(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        try:
            return self._records(account_id, user_id)[assignment_id]
        except KeyError:
            raise NotFoundError(f"no assignment {assignment_id!r}") from None

    def _new_id(self) -> str:
        self._next_id += 1
        return f"a_{self._next_id - 1}"

    def _bumped(self, previous: Record | None) -> str:
        """Now, but always after the record's previous updated_at, so every edit is visible
        to a strictly-after filter even when two edits fall in the same millisecond."""
        now_ms = round(self.clock() * 1000)
        prev = previous.get("updated_at") if previous else None
        if isinstance(prev, str):
            try:
                now_ms = max(now_ms, parse_iso_ms(prev) + 1)
            except ValueError:
                pass
        return iso_ms(now_ms / 1000)

    def _defaults(self, assignment_id: str, user_id: str) -> Record:
        now = self.now_iso()
        n = "".join(ch for ch in assignment_id if ch.isdigit()) or "0"
        return {
            "id": assignment_id,
            "remote_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim:{assignment_id}")),
            "user_id": user_id,
            "remote_user_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sim-user:{user_id}")),
            "learning_object_id": f"lo_{n}",
            "learning_object_type": {"value": "course", "source_value": "COURSE"},
            "learning_object_external_reference": f"course-{n}",
            "status": {"value": "pending", "source_value": "Not Started"},
            "progress": 0,
            "created_at": now,
            "updated_at": now,
            "assigned_at": now,
            "due_date": None,
            "completed_at": None,
            "result": None,
            "certificate_url": None,
            "course_id": f"{n}-ENG-1",
            "unified_custom_fields": {},
        }

    def put_assignment(self, account_id: str, user_id: str, record: Mapping[str, Any]) -> Record:
        """Upsert. A new record gets defaults under the given fields (and an `a_<n>` id when it
        has none); an existing one is replaced by exactly `record`. updated_at becomes now
        unless `record` sets it. Creates the account and user when missing."""
        self.add_user(account_id, user_id)
        records = self.accounts[account_id][user_id]
        aid = record.get("id") or self._new_id()
        if not isinstance(aid, str):
            raise ValueError("assignment id must be a string")
        existing = records.get(aid)
        new = dict(self._defaults(aid, user_id) if existing is None else {})
        new.update(copy.deepcopy(dict(record)))
        new["id"] = aid
        if "updated_at" not in record:
            new["updated_at"] = self._bumped(existing) if existing else new["updated_at"]
        records[aid] = new
        return copy.deepcopy(new)

    def update_assignment(
        self, account_id: str, user_id: str, assignment_id: str, **fields: Any
    ) -> Record:
        """Merge top-level fields into a record; updated_at moves to now unless given."""
        if "id" in fields:
            raise ValueError("an assignment's id cannot change")
        record = self._get(account_id, user_id, assignment_id)
        merged = {**record, **copy.deepcopy(fields)}
        if "updated_at" not in fields:
            merged["updated_at"] = self._bumped(record)
        # assigning an existing key keeps the record's place in the listing order
        self.accounts[account_id][user_id][assignment_id] = merged
        return copy.deepcopy(merged)

    def progress(self, account_id: str, user_id: str, assignment_id: str, pct: float) -> Record:
        """Set progress, with the status (and completion fields) a real LMS would derive."""
        pct = max(0.0, min(100.0, float(pct)))
        value = "completed" if pct >= 100 else "in_progress" if pct > 0 else "pending"
        fields: dict[str, Any] = {
            "progress": int(pct) if pct.is_integer() else pct,
            "status": {"value": value, "source_value": _STATUS_SOURCE[value]},
            "completed_at": self.now_iso() if value == "completed" else None,
            "result": {"value": "Pass", "source_value": "passed"} if value == "completed" else None,
        }
        if value == "completed":
            fields["certificate_url"] = f"https://lms.example.com/certificates/{assignment_id}"
        return self.update_assignment(account_id, user_id, assignment_id, **fields)

    def delete_assignment(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        """Remove a record and return it."""
        self._get(account_id, user_id, assignment_id)
        return self.accounts[account_id][user_id].pop(assignment_id)

    def get_assignment(self, account_id: str, user_id: str, assignment_id: str) -> Record:
        """A copy of one record."""
        return copy.deepcopy(self._get(account_id, user_id, assignment_id))

    def assignments(self, account_id: str, user_id: str) -> list[Record]:
        """Copies of a user's records in listing order."""
        return copy.deepcopy(list(self._records(account_id, user_id).values()))

    def snapshot(self) -> dict[str, Any]:
        """Everything, JSON-ready (for GET /_sim/state)."""
        return {
            "accounts": copy.deepcopy(
                {
                    a: {u: list(recs.values()) for u, recs in users.items()}
                    for a, users in self.accounts.items()
                }
            ),
            "faults": self.faults.to_json(),
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "request_count": len(self.requests),
        }

    # -- seeding and churn ---------------------------------------------------------------

    def seed(self, accounts: int, users: int, assignments: int) -> None:
        """`accounts` accounts acc_1.., each with users u_1.., each with `assignments` records
        of mixed status. Deterministic for a given clock."""
        rng = random.Random(1)
        now = self.clock()
        day = 86400.0
        for ai in range(1, accounts + 1):
            for ui in range(1, users + 1):
                for _ in range(assignments):
                    created = now - rng.uniform(5, 120) * day
                    updated = rng.uniform(created, now - 60)
                    status = rng.choices(list(_STATUS_SOURCE), weights=(35, 35, 30))[0]
                    pct = {"pending": 0, "completed": 100}.get(status) or rng.randint(5, 95)
                    due = now + rng.uniform(-30, 60) * day if rng.random() < 0.7 else None
                    kind = "content" if rng.random() < 0.25 else "course"
                    record: Record = {
                        "learning_object_type": {"value": kind, "source_value": kind.upper()},
                        "status": {"value": status, "source_value": _STATUS_SOURCE[status]},
                        "progress": pct,
                        "created_at": iso_ms(created),
                        "assigned_at": iso_ms(created),
                        "updated_at": iso_ms(updated),
                        "due_date": iso_ms(due) if due is not None else None,
                        "unified_custom_fields": {"cost_center": f"CC-{rng.randint(100, 999)}"},
                    }
                    if status == "completed":
                        record["completed_at"] = iso_ms(updated)
                        record["result"] = {"value": "Pass", "source_value": "passed"}
                        record["certificate_url"] = "https://lms.example.com/certificates/seed"
                    self.put_assignment(f"acc_{ai}", f"u_{ui}", record)

    def churn_once(self) -> tuple[str, str, Record] | None:
        """Advance one random unfinished assignment (pending → in_progress → completed), or
        assign a new course when all are done. Returns (account, user, record)."""
        users = [(a, u) for a, us in self.accounts.items() for u in us]
        if not users:
            return None
        open_ = [
            (a, u, aid)
            for a, u in users
            for aid, rec in self.accounts[a][u].items()
            if (rec.get("status") or {}).get("value") != "completed"
        ]
        if not open_ or self.rng.random() < 0.1:
            a, u = self.rng.choice(users)
            return a, u, self.put_assignment(a, u, {})
        a, u, aid = self.rng.choice(open_)
        current = self.accounts[a][u][aid].get("progress") or 0
        step = self.rng.randint(10, 50)
        pct = 100 if current + step >= 95 else current + step
        return a, u, self.progress(a, u, aid, pct)

    # -- the upstream endpoint -----------------------------------------------------------

    def _auth_ok(self, header: str | None) -> bool:
        if not header or not header.lower().startswith("basic "):
            return False
        try:
            user = base64.b64decode(header[6:].strip(), validate=True).decode().split(":", 1)[0]
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(user.encode(), self.api_key.encode())

    def error(
        self, status: int, message: str | None = None, headers: dict[str, str] | None = None
    ) -> SimResponse:
        """An error in the documented `{statusCode, message, timestamp}` shape."""
        body = {
            "statusCode": status,
            "message": message or MESSAGES.get(status, "Error"),
            "timestamp": self.now_iso(),
        }
        return SimResponse(status, json.dumps(body).encode(), dict(headers or {}))

    def handle_list(
        self, user_id: str, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> SimResponse:
        """Answer `GET /unified/lms/users/{user_id}/assignments` and log the request."""
        now = self.clock()
        lower = {k.lower(): v for k, v in headers.items()}
        record = RequestRecord(
            time=now,
            method="GET",
            path=LIST_PATH.format(id=user_id),
            query={k: v for k, v in query.items()},
            # the service URL-encodes the account id (CONTRACT §3), as it does the user id
            account_id=unquote(lower["x-account-id"]) if "x-account-id" in lower else None,
            user_id=user_id,
            auth_ok=self._auth_ok(lower.get("authorization")),
            status=0,
        )
        response = self._answer(record, user_id)
        until = self.faults.pause_all_until
        if until is not None and now < until:
            # a paused API holds every request, whatever its answer turns out to be
            response.delay += until - now
            record.fault = record.fault or "paused"
        record.status = response.status
        record.delay = response.delay
        self.requests.append(record)
        return response

    def _answer(self, rec: RequestRecord, user_id: str) -> SimResponse:
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
        spec = faults.forced.pop(0) if faults.forced else None
        delay = faults.delay_seconds + float(spec.get("delay", 0.0) if spec else 0.0)
        if spec is not None:
            rec.fault = next((k for k in spec if k != "retry_after"), "forced")
            if "status" in spec:
                extra = {"Retry-After": str(spec["retry_after"])} if "retry_after" in spec else {}
                return self._delayed(self.error(spec["status"], headers=extra), delay)
        if faults.error_rate > 0 and self.rng.random() < faults.error_rate:
            rec.fault = "error_rate"
            return self._delayed(self.error(500), delay)
        if rec.account_id not in self.accounts:
            return self._delayed(self.error(403, "Account not found"), delay)
        if user_id not in self.accounts[rec.account_id]:
            return self._delayed(self.error(404, f"User {user_id} not found"), delay)
        try:
            data, cursor, index = self._page(self.accounts[rec.account_id][user_id], rec.query)
        except ValueError as exc:
            return self._delayed(self.error(400, str(exc)), delay)
        delay += faults.page_delays.get(index, 0.0)
        body: bytes
        if spec and spec.get("malformed_json"):
            body = b'{"data": ['
        elif spec and spec.get("wrong_shape"):
            body = json.dumps({"data": "not-a-list", "next": None}).encode()
        else:
            if spec and spec.get("missing_id") and data:
                data[0] = {k: v for k, v in data[0].items() if k != "id"}
            body = json.dumps({"next": cursor, "data": data}).encode()
        return SimResponse(200, body, {}, delay)

    @staticmethod
    def _delayed(response: SimResponse, delay: float) -> SimResponse:
        response.delay = delay
        return response

    def _page(
        self, records: dict[str, Record], query: Mapping[str, str]
    ) -> tuple[list[Record], str | None, int]:
        """One page: (records, next cursor or None, 0-based page index)."""
        raw_size = query.get("page_size") or ""
        try:
            page_size = int(raw_size) if raw_size.strip() else DEFAULT_PAGE_SIZE
        except ValueError:
            raise ValueError("page_size must be an integer") from None
        page_size = max(1, min(MAX_PAGE_SIZE, page_size))
        if query.get("next"):
            # the cursor carries the filter, as StackOne's does: later pages ignore the params
            state = _decode_cursor(query["next"])
            offset, after, status = state["o"], state.get("f"), state.get("s")
        else:
            offset, status, after = 0, query.get("filter[status]") or None, None
            for name in ("filter[updated_after]", "updated_after"):
                if query.get(name):
                    try:
                        ms = parse_iso_ms(query[name])
                    except ValueError:
                        raise ValueError(f"{name} is not an ISO 8601 date-time") from None
                    after = ms if after is None else max(after, ms)
        matching = [r for r in records.values() if _matches(r, after, status)]
        step = min(page_size, self.faults.max_page_records or page_size)
        chunk = matching[offset : offset + step]
        end = offset + step
        more = end < len(matching)
        if self.faults.runaway_next or (self.faults.trailing_empty_page and chunk):
            more = True
        cursor = _encode_cursor({"o": end, "f": after, "s": status}) if more else None
        return chunk, cursor, offset // step


def _matches(record: Record, after_ms: int | None, status: str | None) -> bool:
    if status is not None and (record.get("status") or {}).get("value") != status:
        return False
    if after_ms is None:
        return True
    updated = record.get("updated_at")
    if not isinstance(updated, str):
        return False  # no timestamp: cannot be "updated after" anything
    try:
        return parse_iso_ms(updated) > after_ms
    except ValueError:
        return False
