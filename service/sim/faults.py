"""Run-time switchable misbehaviour of the simulated StackOne LMS: forced faults, the rate
limiter's token bucket and the per-request log record.

Pure data and validation, no I/O; `service.sim.lms_state.SimLMS` applies them per request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict, cast

__all__ = [
    "FaultSpec",
    "Faults",
    "RequestRecord",
    "TokenBucket",
    "parse_fault_spec",
]


class FaultSpec(TypedDict, total=False):
    """One forced fault: exactly one of status (+ retry_after, + provider_errors: the error
    body carries a provider's answer, as StackOne passes on a provider's 429), malformed_json,
    wrong_shape, missing_id, delay. With `account_id`, only a request of that account takes
    it (the others pass it by), as one account's provider misbehaves; with `path`, only a
    request whose path ends so (`/completions`). With `accounts: true`, only the
    linked-account listing (`GET /accounts`) takes it, and only it."""

    status: int
    retry_after: str | int
    provider_errors: bool
    account_id: str
    path: str
    accounts: bool
    malformed_json: bool
    wrong_shape: bool
    missing_id: bool
    delay: float


_FAULT_KINDS = ("status", "malformed_json", "wrong_shape", "missing_id", "delay")
# what a spec may say besides its kind
# `path`: only requests whose path ends so (`/completions`: either completion route)
_FAULT_MODIFIERS = ("retry_after", "provider_errors", "account_id", "path", "accounts")


def parse_fault_spec(obj: object) -> FaultSpec:
    """Validate a forced-fault spec from JSON; ValueError says what is wrong."""
    if not isinstance(obj, dict):
        raise ValueError(f"fault spec must be an object, got {obj!r}")
    unknown = set(obj) - {*_FAULT_KINDS, *_FAULT_MODIFIERS}
    if unknown:
        raise ValueError(f"unknown fault spec keys: {sorted(unknown)}")
    kinds = [k for k in _FAULT_KINDS if k in obj]
    if len(kinds) != 1:
        raise ValueError(f"a fault spec needs exactly one of {list(_FAULT_KINDS)}: {obj!r}")
    kind, value = kinds[0], obj[kinds[0]]
    if kind == "status" and (type(value) is not int or not 100 <= value <= 599):
        raise ValueError("status must be an HTTP status code")
    if kind == "delay" and (
        isinstance(value, bool) or not isinstance(value, int | float) or value < 0
    ):
        raise ValueError("delay must be a non-negative number of seconds")
    if kind in ("malformed_json", "wrong_shape", "missing_id") and value is not True:
        raise ValueError(f"{kind} must be true")
    for modifier in ("retry_after", "provider_errors"):
        if modifier in obj and kind != "status":
            raise ValueError(f"{modifier} only goes with status")
    if "provider_errors" in obj and obj["provider_errors"] is not True:
        raise ValueError("provider_errors must be true")
    for modifier in ("account_id", "path"):
        if modifier in obj and (not isinstance(obj[modifier], str) or not obj[modifier]):
            raise ValueError(f"{modifier} must be a non-empty string")
    if "accounts" in obj and (obj["accounts"] is not True or "account_id" in obj):
        raise ValueError("accounts must be true, without account_id")
    return cast(FaultSpec, dict(obj))


@dataclass
class Faults:
    """Run-time switchable misbehaviour, applied per request (see service.sim.gate.Gate._answer)."""

    pause_all_until: float | None = None  # clock time until which every request is held
    # consumed one per request (the first that applies to the request's account)
    forced: list[FaultSpec] = field(default_factory=list)
    delay_seconds: float = 0.0  # added to every request
    account_delays: dict[str, float] = field(default_factory=dict)  # account id → seconds
    error_rate: float = 0.0  # fraction answered 500, drawn from SimLMS.rng
    page_delays: dict[int, float] = field(default_factory=dict)  # 0-based page index → seconds
    max_page_records: int | None = None  # short pages that still carry a next
    trailing_empty_page: bool = False  # the last data page has a next leading to an empty one
    runaway_next: bool = False  # next never ends
    # the account-wide assignments endpoint only (the per-user one is unaffected):
    account_filter_ignored: bool = False  # filter[updated_after] ignored: older records too
    account_endpoint_status: int | None = None  # answered instead, e.g. 404 or 501
    # the linked-account listing (`GET /accounts`) cut short: only this many accounts
    # (0: it answers `[]`), whatever the page
    accounts_limit: int | None = None

    def take_forced(
        self, account_id: str | None, path: str = "", *, accounts: bool = False
    ) -> FaultSpec | None:
        """The first forced fault for a request of `account_id` to `path` (`accounts`: the
        linked account listing's), consumed; None if none."""
        for index, spec in enumerate(self.forced):
            if bool(spec.get("accounts")) != accounts:
                continue
            if accounts or (
                spec.get("account_id", account_id) == account_id
                and path.endswith(spec.get("path", ""))
            ):
                return self.forced.pop(index)
        return None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready settings."""
        out = asdict(self)
        out["page_delays"] = {str(k): v for k, v in self.page_delays.items()}
        return out

    def apply_json(self, body: Mapping[str, Any], now: float) -> None:
        """Set fields from a control-API body (`forced` appends, `pause_seconds` is relative).
        Validates everything before changing anything."""
        known = {f for f in self.__dataclass_fields__} | {"pause_seconds"}
        unknown = set(body) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {sorted(unknown)}")
        changes: dict[str, Any] = {}
        for name, value in body.items():
            if name == "forced":
                if not isinstance(value, list):
                    raise ValueError("forced must be a list of fault specs")
                changes[name] = [*self.forced, *(parse_fault_spec(v) for v in value)]
            elif name == "account_delays":
                if not isinstance(value, dict):
                    raise ValueError("account_delays must map account id to seconds")
                changes[name] = {str(k): _seconds(name, v) for k, v in value.items()}
            elif name == "page_delays":
                if not isinstance(value, dict):
                    raise ValueError("page_delays must map page index to seconds")
                changes[name] = {int(k): _seconds(name, v) for k, v in value.items()}
            elif name in ("trailing_empty_page", "runaway_next", "account_filter_ignored"):
                if not isinstance(value, bool):
                    raise ValueError(f"{name} must be a boolean")
                changes[name] = value
            elif name == "max_page_records":
                if value is not None and (type(value) is not int or value < 1):
                    raise ValueError("max_page_records must be a positive integer or null")
                changes[name] = value
            elif name == "accounts_limit":
                if value is not None and (type(value) is not int or value < 0):
                    raise ValueError("accounts_limit must be a whole number ≥ 0 or null")
                changes[name] = value
            elif name == "account_endpoint_status":
                if value is not None and (type(value) is not int or not 400 <= value <= 599):
                    raise ValueError(f"{name} must be an HTTP error status (400..599) or null")
                changes[name] = value
            elif name == "pause_seconds":
                changes["pause_all_until"] = now + _seconds(name, value)
            elif name == "pause_all_until":
                changes[name] = None if value is None else _seconds(name, value)
            elif name == "error_rate":
                if not 0 <= _seconds(name, value) <= 1:
                    raise ValueError("error_rate must be within 0..1")
                changes[name] = float(value)
            else:
                changes[name] = _seconds(name, value)
        for name, value in changes.items():
            setattr(self, name, value)


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{name} must be a non-negative number")
    return float(value)


@dataclass
class RequestRecord:
    """One request to a unified list endpoint, as the simulator saw and answered it."""

    time: float
    method: str
    path: str
    query: dict[str, str]
    account_id: str | None
    user_id: str | None  # the path's user; on the account endpoint the user_id filter, if any
    auth_ok: bool
    status: int
    fault: str | None = None  # which fault or limit shaped the answer, if any
    delay: float = 0.0  # how long the answer was held

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


class TokenBucket:
    """Refills per_minute/60 tokens a second; bursts up to 10% of the minute's budget."""

    def __init__(self, per_minute: float, clock: Callable[[], float]) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute * 0.1)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()

    def take(self) -> float:
        """Take a token: 0 when granted, else the seconds until one is available."""
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate
